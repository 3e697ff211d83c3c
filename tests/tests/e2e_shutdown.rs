//! The agent's orderly shutdown, over the real binaries: the coordinator, the
//! DPU simulator on FUSE, `hostplane-sim bmc` (HTTPS with its lab CA) and the
//! agent. SIGTERM arrives while every subsystem is busy — a flash pushing its
//! image, a BMC session open, a power cap applied, the network drift watch
//! running — and each must have cleaned up when the process exits 0: the
//! BMC's SessionService is empty (read with a client of our own), the
//! journal says the flash was interrupted, the rshim's misc values are as
//! they were before the flash, the caps state is on disk. Then a start/stop
//! loop leaves no BMC session behind.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::{
    self, DpuPhase, NodeEffect, PowerElement, PowerLimit, PowerPolicySpec, RebootMethod,
};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{Proc, bin, fuse_unavailable, get_dpu, meta, power, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
/// The misc knobs a flash changes and must put back.
const KNOBS: [&str; 3] = ["BOOT_TIMEOUT", "CLEAR_ON_READ", "DISPLAY_LEVEL"];

/// `hostplane-sim bmc` with one DGX H100 BMC on a free port; its URL and CA.
async fn start_bmc(dir: &Path) -> Result<(Proc, String, PathBuf)> {
    let certs = dir.join("bmc-certs");
    let log = dir.join("logs/bmc.log");
    let p = Proc::spawn(
        "bmc",
        &bin("hostplane-sim")?,
        &[
            "bmc",
            "--bmc",
            "bmc-n1=dgx-h100@0",
            "--workload",
            "constant:1",
            "--cert-dir",
            certs.to_str().context("utf-8 path")?,
        ],
        &log,
    )?;
    // It prints `NAME MODEL URL` per BMC once serving.
    let url = wait_for("the BMC simulator to serve", Duration::from_secs(30), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .find(|l| l.starts_with("bmc-n1 "))
                .and_then(|l| l.split_whitespace().last())
                .map(str::to_string)
        }
    })
    .await?;
    Ok((p, url, certs.join("ca.crt")))
}

/// The BMC's open sessions, as its SessionService lists them.
async fn bmc_sessions(url: &str, ca: &Path) -> Result<u64> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()?;
    let body = client
        .get(format!("{url}/redfish/v1/SessionService/Sessions"))
        .basic_auth("admin", Some("admin"))
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let v: Value = serde_json::from_slice(&body)?;
    v["Members@odata.count"]
        .as_u64()
        .with_context(|| format!("no Members@odata.count in {v}"))
}

/// `KEY value` of each knob in the misc text.
fn knobs(misc: &str) -> Vec<(String, String)> {
    KNOBS
        .iter()
        .map(|k| {
            let v = misc
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default();
            ((*k).to_string(), v)
        })
        .collect()
}

fn agent_yaml(sysfs: &Path, url: &str, pw: &Path, ca: &Path) -> String {
    format!(
        "power:\n  sysfs_root: {sysfs}\n  bmc:\n    url: {url}\n    username: admin\n    password_file: {pw}\n    ca_file: {ca}\n    poll_interval: 500ms\n  caps:\n    reverify_interval: 1s\n",
        sysfs = sysfs.display(),
        pw = pw.display(),
        ca = ca.display(),
    )
}

fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_every_subsystem_is_busy_cleans_each_up_and_exits_0() -> Result<()> {
    if let Some(why) = fuse_unavailable() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    // A slow link: the push of a 6 MiB image takes about 20 s, so SIGTERM finds it running.
    let mut w = World::start(WorldOpts {
        dpus: 1,
        faults: vec!["rshim0=slow:300000".into()],
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\nshutdown_grace: 20s\n"
            .into(),
        ..Default::default()
    })
    .await?;
    let (_bmc, url, ca) = start_bmc(&w.dir).await?;
    let sysfs = w.dir.join("sysfs-n1");
    power::fake_sysfs(&sysfs)?;
    let pw = w.dir.join("bmc.password");
    std::fs::write(&pw, "admin\n")?;
    let misc_path = w.dev_root.join("rshim0/misc");
    // Level 1 shows CLEAR_ON_READ; the flash sets level 2 and must put 1 back.
    std::fs::write(&misc_path, "DISPLAY_LEVEL 1\n")?;
    let before = knobs(&std::fs::read_to_string(&misc_path)?);
    assert!(
        before.iter().all(|(_, v)| !v.is_empty()),
        "misc lists the knobs: {before:?}"
    );

    w.start_agent_with("n1", &agent_yaml(&sysfs, &url, &pw, &ca))?;
    let state = w.dir.join("agents/n1");
    let log = w.log_path("agent-n1");
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0")],
        &[("model", "bf3")],
    )
    .await?;
    w.admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::PowerPolicy {
                    metadata: meta("cap"),
                    spec: Some(PowerPolicySpec {
                        nodes: vec!["n1".into()],
                        limits: vec![PowerLimit {
                            element: PowerElement::Node as i32,
                            value: Some(v1::power_limit::Value::Watts(8_000.0)),
                        }],
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            ),
        })
        .await?;
    w.add_bfb("bfb-1", 6 << 20, "4.9.0").await?;
    w.add_flavor("f1", &[]).await?;
    w.add_deployment(
        "d1",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f1".into(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await?;

    // Busy everywhere: pushing, a BMC session open, a cap applied and recorded.
    let admin = w.admin.clone();
    let busy = wait_for(
        "the flash pushing, a BMC session open and a cap applied",
        T,
        || {
            let mut admin = admin.clone();
            let (url, ca, state) = (url.clone(), ca.clone(), state.clone());
            async move {
                let d = get_dpu(&mut admin, "dpu-a").await.ok()??;
                let st = d.status?;
                let pushing =
                    st.phase() == DpuPhase::OsInstalling && st.progress.is_some_and(|p| p.bytes_pushed > 0);
                let sessions = bmc_sessions(&url, &ca).await.ok()?;
                let caps: Value =
                    serde_json::from_slice(&std::fs::read(state.join("power-caps.json")).ok()?).ok()?;
                let capped = caps["touched"].as_object().is_some_and(|t| !t.is_empty());
                (pushing && sessions == 1 && capped).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = busy {
        bail!("{e}\n--- agent log:\n{}", tail(&log, 40));
    }
    let network_running = std::fs::read_to_string(&log)?;
    assert!(
        !network_running.contains("host networking is disabled"),
        "the drift watch runs (network is enabled by default)"
    );

    let (_, mut agent) = w.agents.pop().context("the agent")?;
    let code = agent.stop(Duration::from_secs(40)).await;
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(
        code,
        Some(0),
        "SIGTERM exits 0\n--- agent log:\n{}",
        tail(&log, 40)
    );

    // The BMC session was deleted.
    assert_eq!(
        bmc_sessions(&url, &ca).await?,
        0,
        "the agent logged out of the BMC"
    );
    // The flash stopped at a safe point and is journaled as interrupted.
    let journal: Value = serde_json::from_slice(&std::fs::read(state.join("journal.json"))?)?;
    let flash = journal["entries"]
        .as_object()
        .and_then(|e| e.values().find(|e| e["kind"] == "flash_bfb"))
        .with_context(|| format!("a flash in the journal: {journal}"))?;
    let outcome = flash["result"]["outcome"].to_string();
    assert!(
        outcome.contains("INTERRUPTED") || outcome == (v1::CommandOutcome::Interrupted as i32).to_string(),
        "the flash is journaled interrupted: {flash}"
    );
    assert!(
        flash["result"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down")),
        "{flash}"
    );
    // The device's misc values are as the flash found them.
    assert_eq!(
        knobs(&std::fs::read_to_string(&misc_path)?),
        before,
        "misc values restored"
    );
    // The caps state is on disk for the next start.
    let caps: Value = serde_json::from_slice(&std::fs::read(state.join("power-caps.json"))?)?;
    assert!(
        caps["touched"].as_object().is_some_and(|t| !t.is_empty()),
        "{caps}"
    );
    // The drain went in order and each subsystem ended within the deadline.
    let order = [
        "stopping the subsystems",
        "\"bfb_cache\"",
        "\"power_caps\"",
        "\"power\"",
        "\"net\"",
        "\"metrics\"",
        "session stopped",
    ];
    let mut at = 0;
    for what in order {
        let found = text[at..]
            .find(what)
            .with_context(|| format!("{what} stopped after the previous step\n--- agent log:\n{text}"))?;
        at += found;
    }
    assert!(
        !text.contains("did not stop within the shutdown deadline"),
        "{text}"
    );

    // Start and stop again and again: never a session left open.
    for run in 0..5 {
        w.start_agent_with("n1", &agent_yaml(&sysfs, &url, &pw, &ca))?;
        let (u, c) = (url.clone(), ca.clone());
        wait_for("the agent's BMC session", T, || {
            let (u, c) = (u.clone(), c.clone());
            async move { (bmc_sessions(&u, &c).await.ok()? == 1).then_some(()) }
        })
        .await
        .with_context(|| format!("run {run}"))?;
        let (_, mut agent) = w.agents.pop().context("the agent")?;
        assert_eq!(agent.stop(Duration::from_secs(40)).await, Some(0), "run {run}");
        assert_eq!(
            bmc_sessions(&url, &ca).await?,
            0,
            "run {run}: a BMC session was left open\n--- agent log:\n{}",
            tail(&log, 30)
        );
    }
    w.shutdown().await
}
