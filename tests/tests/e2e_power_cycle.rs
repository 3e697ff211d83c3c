//! NIC firmware parameters and host power cycles end to end (issue 14), over
//! the real coordinator, agent and simulator binaries (FUSE DPUs, the
//! `hostplane-sim bmc` Redfish BMC) and the fake `mstconfig`
//! (agent/tests/fixtures/fake_mstconfig.sh): a Flavor's `nvconfig` with
//! `host_power_cycle_required` is applied in ConfigFWParameters, then the
//! node is power-cycled through its BMC (docs/state-machine.md "Power
//! cycles"); without a BMC the upstream must say it power-cycled; a value
//! the tool refuses stops the Dpu with the tool's words and no reboot.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hostplane_proto::v1::{self, DpuPhase, Kind, NicFirmwareConfig, NodeEffect, RebootKind, RebootMethod};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{Proc, get_dpu, meta, require_fuse, wait_for, wait_phase};

const T: Duration = Duration::from_secs(40);
/// The Device's PF0: the simulator puts rshim0 at bus 0x04 (World::add_node).
const PCI: &str = "0000:04:00.0";
const BOOT_ID_AFTER: &str = "00000000-0000-4000-8000-0000000000c2";

fn opts() -> WorldOpts {
    WorldOpts {
        dpus: 1,
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        ..Default::default()
    }
}

/// The fake mstconfig's state (the device, then NAME TYPE DEFAULT CURRENT
/// NEXT per parameter) and a wrapper the agent runs as its mstconfig.
struct FakeMstconfig {
    state: PathBuf,
    wrapper: PathBuf,
}

impl FakeMstconfig {
    fn new(dir: &Path) -> Result<FakeMstconfig> {
        use std::os::unix::fs::PermissionsExt;
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/fake_mstconfig.sh");
        ensure!(fixture.exists(), "{} is missing", fixture.display());
        let state = dir.join("mstconfig.state");
        std::fs::write(
            &state,
            format!("{PCI}\nPF_BAR2_ENABLE bool 0 0 0\nPER_PF_NUM_SF bool 0 0 0\nPF_TOTAL_SF num 0 0 0\n"),
        )?;
        let wrapper = dir.join("mstconfig");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nFAKE_MSTCONFIG_STATE='{}' exec sh '{}' \"$@\"\n",
                state.display(),
                fixture.display()
            ),
        )?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        Ok(FakeMstconfig { state, wrapper })
    }

    fn state(&self) -> String {
        std::fs::read_to_string(&self.state).unwrap_or_default()
    }

    /// Every invocation's arguments, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(format!("{}.log", self.state.display()))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

/// A reboot command that only leaves a marker: it must never run here.
fn reboot_marker_script(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let marker = dir.join("rebooted-by-command");
    let script = dir.join("reboot.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", marker.display()),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok((script, marker))
}

/// The real `hostplane-sim bmc` with one BMC over HTTPS (its lab CA in `cert_dir`).
struct Bmc {
    _proc: Proc,
    url: String,
    ca: PathBuf,
    password_file: PathBuf,
    http: reqwest::Client,
}

impl Bmc {
    async fn start(w: &World) -> Result<Bmc> {
        let cert_dir = w.dir.join("bmc-tls");
        let log = w.log_path("bmc");
        let proc = Proc::spawn(
            "bmc",
            &hostplane_tests::bin("hostplane-sim")?,
            &[
                "bmc",
                "--bmc",
                "n1=dgx-h100@127.0.0.1:0",
                "--power-transition",
                "1s",
                "--username",
                "admin",
                "--password",
                "admin",
                "--cert-dir",
                cert_dir.to_str().context("utf-8 path")?,
            ],
            &log,
        )?;
        // Its stdout line once it serves: `NAME MODEL URL`.
        let url = wait_for("the BMC simulator's URL line", Duration::from_secs(20), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("n1") && w.next() == Some("dgx-h100"))
                        .then(|| w.next().map(String::from))
                        .flatten()
                })
            }
        })
        .await
        .with_context(|| format!("see {}", log.display()))?;
        let ca = cert_dir.join("ca.crt");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?)
            .timeout(Duration::from_secs(5))
            .build()?;
        let password_file = w.dir.join("bmc.password");
        std::fs::write(&password_file, "admin\n")?;
        Ok(Bmc {
            _proc: proc,
            url,
            ca,
            password_file,
            http,
        })
    }

    /// The agent's `power:` section with this BMC.
    fn agent_yaml(&self) -> String {
        format!(
            "power:\n  bmc:\n    url: {}\n    username: admin\n    password_file: {}\n    ca_file: {}\n    poll_interval: 1s\n",
            self.url,
            self.password_file.display(),
            self.ca.display()
        )
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .basic_auth("admin", Some("admin"))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        ensure!(r.status().is_success(), "GET {path}: {}", r.status());
        Ok(serde_json::from_str(&r.text().await?)?)
    }

    /// The one ComputerSystem's path.
    async fn system(&self) -> Result<String> {
        let coll = self.get_json("/redfish/v1/Systems").await?;
        let members = coll["Members"].as_array().context("Systems has no Members")?;
        ensure!(members.len() == 1, "one System expected: {coll}");
        Ok(members[0]["@odata.id"]
            .as_str()
            .context("member without @odata.id")?
            .to_string())
    }

    async fn power_state(&self, system: &str) -> Result<String> {
        let s = self.get_json(system).await?;
        Ok(s["PowerState"].as_str().context("no PowerState")?.to_string())
    }

    /// `hostplane_sim_bmc_system_resets_total{reset_type=TYPE}` from /metrics.
    async fn resets_metric(&self, reset_type: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        let label = format!("reset_type=\"{reset_type}\"");
        for line in text.lines() {
            if line.starts_with("hostplane_sim_bmc_system_resets_total{") && line.contains(&label) {
                let v = line.rsplit(' ').next().context("no value")?;
                return Ok(v.parse()?);
            }
        }
        bail!("no hostplane_sim_bmc_system_resets_total with {label} in:\n{text}")
    }
}

/// Watches the System's PowerState over Redfish (every 50 ms) and keeps
/// every change, the first reading included.
fn watch_power_state(bmc: &Bmc, system: String) -> tokio::task::JoinHandle<Vec<String>> {
    let (url, http) = (bmc.url.clone(), bmc.http.clone());
    tokio::spawn(async move {
        let mut states: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + T;
        while tokio::time::Instant::now() < deadline {
            let r = http
                .get(format!("{url}{system}"))
                .basic_auth("admin", Some("admin"))
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(text) = r.text().await
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(s) = v["PowerState"].as_str()
                && states.last().map(String::as_str) != Some(s)
            {
                states.push(s.to_string());
                // Off, then On again: the cycle is complete.
                if states.iter().any(|x| x == "Off") && s == "On" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        states
    })
}

fn nvconfig(parameters: &[&str]) -> Vec<NicFirmwareConfig> {
    vec![NicFirmwareConfig {
        device: "*".into(),
        parameters: parameters.iter().map(|p| p.to_string()).collect(),
        host_power_cycle_required: true,
    }]
}

/// Node n1 (AGENT) with d0 on rshim0, a BFB, Flavor `f1` with `nvconfig`, a Deployment.
async fn provision(w: &mut World, reboot: RebootMethod, nv: Vec<NicFirmwareConfig>) -> Result<()> {
    w.add_node("n1", reboot, &[("d0", "rshim0")], &[("model", "bf3")])
        .await?;
    w.add_bfb("b1", 1 << 20, "4.9.0").await?;
    w.admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::Flavor {
                    metadata: meta("f1"),
                    spec: Some(v1::FlavorSpec {
                        nvconfig: nv,
                        ..Default::default()
                    }),
                }
                .into(),
            ),
        })
        .await
        .context("creating flavor f1")?;
    w.add_deployment(
        "dep",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "b1".into(),
            flavor: "f1".into(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
}

async fn get_node(w: &mut World, name: &str) -> Result<v1::Node> {
    let r = w
        .admin
        .get(v1::GetRequest {
            kind: Kind::Node as i32,
            name: name.into(),
        })
        .await?
        .into_inner();
    match r.kind {
        Some(v1::resource::Kind::Node(n)) => Ok(n),
        other => bail!("get node {name} returned {other:?}"),
    }
}

/// The message of the Dpu's transition out of ConfigFWParameters (the agent's report).
fn fw_message(d: &v1::Dpu) -> String {
    let st = d.status.clone().unwrap_or_default();
    st.history
        .iter()
        .filter(|t| t.from() == DpuPhase::ConfigFwParameters)
        .map(|t| t.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The agent's config for these tests: the fake mstconfig, a reboot command
/// that leaves a marker, and `extra` (the BMC).
fn agent_yaml(fake: &FakeMstconfig, reboot: &Path, extra: &str) -> String {
    format!(
        "nic_firmware:\n  mstconfig_path: {}\n  timeout: 10s\nreboot_command: ['{}']\n{extra}",
        fake.wrapper.display(),
        reboot.display()
    )
}

fn dump_logs(w: &World) {
    for name in ["coordinator", "agent-n1", "bmc"] {
        let log = std::fs::read_to_string(w.log_path(name)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!("--- {name} log (newest first):\n{}", tail.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nvconfig_needing_a_power_cycle_power_cycles_the_host_through_its_bmc() {
    require_fuse!();
    let mut w = World::start(opts()).await.unwrap();
    let r = power_cycle_through_the_bmc(&mut w).await;
    if r.is_err() {
        dump_logs(&w);
    }
    r.unwrap();
    w.shutdown().await.unwrap();
}

async fn power_cycle_through_the_bmc(w: &mut World) -> Result<()> {
    let fake = FakeMstconfig::new(&w.dir)?;
    let (reboot, marker) = reboot_marker_script(&w.dir)?;
    let bmc = Bmc::start(w).await?;
    let system = bmc.system().await?;
    assert_eq!(bmc.power_state(&system).await?, "On");
    assert_eq!(bmc.resets_metric("PowerCycle").await?, 0.0);
    let watcher = watch_power_state(&bmc, system.clone());

    provision(
        w,
        RebootMethod::Agent,
        nvconfig(&["PF_TOTAL_SF=20", "PER_PF_NUM_SF=1", "PF_BAR2_ENABLE=0"]),
    )
    .await?;
    let own = agent_yaml(&fake, &reboot, &bmc.agent_yaml());
    w.start_agent_with("n1", &own)?;

    // The BMC's System goes Off and comes back On.
    let states = tokio::time::timeout(T, watcher).await??;
    assert!(
        states.windows(2).any(|p| p[0] == "Off" && p[1] == "On")
            && states.first().map(String::as_str) == Some("On"),
        "PowerState over Redfish: {states:?}"
    );
    assert_eq!(bmc.resets_metric("PowerCycle").await?, 1.0, "one PowerCycle");
    for other in ["ForceRestart", "GracefulRestart", "ForceOff"] {
        assert_eq!(bmc.resets_metric(other).await?, 0.0, "{other}");
    }

    // The parameters were set for the Device's PCI address, one set each
    // (PF_BAR2_ENABLE already was 0), after a query.
    let state = fake.state();
    assert!(state.starts_with(&format!("{PCI}\n")), "{state}");
    assert!(state.contains("PF_TOTAL_SF num 0 0 20"), "{state}");
    assert!(state.contains("PER_PF_NUM_SF bool 0 0 1"), "{state}");
    assert!(state.contains("PF_BAR2_ENABLE bool 0 0 0"), "{state}");
    let sets: Vec<String> = fake.calls().into_iter().filter(|c| c.contains(" set ")).collect();
    sets.iter()
        .for_each(|s| assert!(s.starts_with(&format!("-d {PCI} -y set ")), "{s}"));
    let mut set_args: Vec<&str> = sets.iter().filter_map(|s| s.rsplit(' ').next()).collect();
    set_args.sort_unstable();
    assert_eq!(set_args, ["PER_PF_NUM_SF=1", "PF_TOTAL_SF=20"], "{sets:?}");

    // The node recorded a power cycle; the Dpu waits for the host to come back.
    let node = wait_for("node n1 to record the power cycle", T, || {
        let mut admin = w.admin.clone();
        async move {
            let r = admin
                .get(v1::GetRequest {
                    kind: Kind::Node as i32,
                    name: "n1".into(),
                })
                .await
                .ok()?
                .into_inner();
            match r.kind {
                Some(v1::resource::Kind::Node(n))
                    if n.status.as_ref()?.last_reboot_kind == RebootKind::PowerCycle as i32 =>
                {
                    Some(n)
                }
                _ => None,
            }
        }
    })
    .await?;
    let st = node.status.unwrap_or_default();
    assert!(st.rebooted_at_ms > 0, "{st:?}");
    assert!(!st.power_cycle_required, "the BMC did it: {st:?}");
    let d = get_dpu(&mut w.admin, "d0").await?.context("d0")?;
    assert_eq!(hostplane_tests::phase_of(&d), DpuPhase::Rebooting);
    let msgs = fw_message(&d);
    assert!(
        msgs.contains("PF_TOTAL_SF 0 -> 20") && msgs.contains("PER_PF_NUM_SF False(0) -> True(1)"),
        "ConfigFWParameters names the parameters old -> new: {msgs}"
    );
    assert!(msgs.contains("PF_BAR2_ENABLE=0 unchanged"), "{msgs}");
    // The agent reported the values pending a power cycle (the fake's running values stay until
    // the firmware reloads), and that is what made the reboot a power cycle.
    assert!(
        msgs.contains("the running value of PER_PF_NUM_SF, PF_TOTAL_SF does not match yet"),
        "{msgs}"
    );
    let pc = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.r#type == "PowerCycleRequired")
        .context("condition PowerCycleRequired")?;
    assert_eq!(
        (pc.status.as_str(), pc.reason.as_str()),
        ("True", "NicFirmwarePending"),
        "{pc:?}"
    );
    let into_rebooting = d
        .status
        .as_ref()
        .unwrap()
        .history
        .iter()
        .rev()
        .find(|t| t.to() == DpuPhase::Rebooting)
        .context("no transition into Rebooting")?
        .clone();
    assert!(
        into_rebooting
            .message
            .contains("power-cycles the host through its BMC"),
        "{into_rebooting:?}"
    );
    assert!(
        st.rebooted_at_ms >= into_rebooting.at_ms,
        "the power cycle recorded at {} ms, before the Dpu entered Rebooting at {} ms",
        st.rebooted_at_ms,
        into_rebooting.at_ms
    );

    // The host comes back: a new boot id, the agent starts again, the Dpu is Ready.
    w.crash_agent("n1").await;
    std::fs::write(
        w.dir.join("agents/n1/proc/sys/kernel/random/boot_id"),
        format!("{BOOT_ID_AFTER}\n"),
    )?;
    w.start_agent_with("n1", &own)?;
    let d = wait_phase(&mut w.admin, "d0", DpuPhase::Ready, T).await?;
    let out_of_rebooting = d
        .status
        .unwrap_or_default()
        .history
        .into_iter()
        .find(|t| t.from() == DpuPhase::Rebooting)
        .context("no transition out of Rebooting")?;
    assert!(
        out_of_rebooting.message.contains("power cycle"),
        "{out_of_rebooting:?}"
    );
    let node = get_node(w, "n1").await?;
    let st = node.status.unwrap_or_default();
    assert_eq!(st.boot_id, BOOT_ID_AFTER);
    assert_eq!(st.last_reboot_kind(), RebootKind::PowerCycle);
    assert!(
        !marker.exists(),
        "the reboot command ran instead of the BMC power cycle"
    );
    assert_eq!(bmc.resets_metric("PowerCycle").await?, 1.0, "still exactly one");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bmc_the_upstream_must_say_it_power_cycled() {
    require_fuse!();
    let mut w = World::start(opts()).await.unwrap();
    let r = power_cycle_without_a_bmc(&mut w).await;
    if r.is_err() {
        dump_logs(&w);
    }
    r.unwrap();
    w.shutdown().await.unwrap();
}

async fn power_cycle_without_a_bmc(w: &mut World) -> Result<()> {
    let fake = FakeMstconfig::new(&w.dir)?;
    let (reboot, marker) = reboot_marker_script(&w.dir)?;
    provision(
        w,
        RebootMethod::Agent,
        nvconfig(&["PF_TOTAL_SF=20", "PER_PF_NUM_SF=1"]),
    )
    .await?;
    w.start_agent_with("n1", &agent_yaml(&fake, &reboot, ""))?;

    // RebootHost{power_cycle} is SKIPPED: the Dpu waits for an external power cycle.
    let admin = w.admin.clone();
    let d = wait_for("d0 to wait for an external power cycle", T, || {
        let mut admin = admin.clone();
        async move {
            let d = get_dpu(&mut admin, "d0").await.ok()??;
            let st = d.status.as_ref()?;
            if st.phase() == DpuPhase::Error {
                return Some(d);
            }
            (st.phase() == DpuPhase::Rebooting
                && st
                    .conditions
                    .iter()
                    .any(|c| c.r#type == "ExternalPowerCycle" && c.status == "True"))
            .then_some(d)
        }
    })
    .await?;
    let st = d.status.clone().unwrap_or_default();
    assert_eq!(st.phase(), DpuPhase::Rebooting, "{}", st.message);
    let cond = st
        .conditions
        .iter()
        .find(|c| c.r#type == "ExternalPowerCycle")
        .unwrap();
    assert_eq!(cond.reason, "AgentCannotPowerCycle", "{cond:?}");
    assert!(cond.message.contains("no BMC configured"), "{cond:?}");
    assert!(
        fake.state().contains("PF_TOTAL_SF num 0 0 20"),
        "{}",
        fake.state()
    );

    let node = get_node(w, "n1").await?;
    let before = node.status.clone().unwrap_or_default();
    assert!(
        before.waiting_for_reboot && before.power_cycle_required,
        "{before:?}"
    );
    assert_eq!(before.last_reboot_kind(), RebootKind::Unspecified);
    let rs = w
        .admin
        .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
        .await?
        .into_inner();
    assert!(rs.waiting_for_reboot && rs.power_cycle_required, "{rs:?}");
    assert_eq!(rs.dpus, ["d0"]);

    // A warm reboot is not enough: refused, nothing changes.
    let e = w
        .admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .expect_err("MarkRebooted without power_cycled must be refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("n1") && e.message().contains("d0"), "{e:?}");
    let after = get_node(w, "n1").await?.status.unwrap_or_default();
    assert_eq!(after.rebooted_at_ms, before.rebooted_at_ms);
    assert_eq!(after.last_reboot_kind, before.last_reboot_kind);
    assert!(after.power_cycle_required);
    let d2 = get_dpu(&mut w.admin, "d0").await?.context("d0")?;
    let st2 = d2.status.unwrap_or_default();
    assert_eq!(st2.phase(), DpuPhase::Rebooting);
    assert_eq!(st2.phase_entered_at_ms, st.phase_entered_at_ms);

    // The host reboots warm (a new boot id): not a power cycle, the Dpu keeps waiting.
    w.crash_agent("n1").await;
    std::fs::write(
        w.dir.join("agents/n1/proc/sys/kernel/random/boot_id"),
        format!("{BOOT_ID_AFTER}\n"),
    )?;
    w.start_agent_with("n1", &agent_yaml(&fake, &reboot, ""))?;
    wait_for("node n1 to report its new boot id", T, || {
        let mut admin = w.admin.clone();
        async move {
            let r = admin
                .get(v1::GetRequest {
                    kind: Kind::Node as i32,
                    name: "n1".into(),
                })
                .await
                .ok()?
                .into_inner();
            match r.kind {
                Some(v1::resource::Kind::Node(n)) if n.status.as_ref()?.boot_id == BOOT_ID_AFTER => Some(()),
                _ => None,
            }
        }
    })
    .await?;
    // A few Reconciler passes with the new boot id.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d3 = get_dpu(&mut w.admin, "d0").await?.context("d0")?;
    let st3 = d3.status.unwrap_or_default();
    assert_eq!(st3.phase(), DpuPhase::Rebooting, "{}", st3.message);
    assert!(
        st3.conditions
            .iter()
            .any(|c| c.r#type == "ExternalPowerCycle" && c.status == "True"),
        "{:?}",
        st3.conditions
    );

    // The upstream power-cycled it.
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: true,
        })
        .await?;
    wait_phase(&mut w.admin, "d0", DpuPhase::Ready, T).await?;
    let st = get_node(w, "n1").await?.status.unwrap_or_default();
    assert_eq!(st.last_reboot_kind(), RebootKind::PowerCycle);
    assert!(st.rebooted_at_ms > 0);
    assert!(!st.power_cycle_required && !st.waiting_for_reboot, "{st:?}");
    assert!(!marker.exists(), "a power cycle must not run the reboot command");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_tool_refuses_stops_the_dpu_with_its_words_and_no_reboot() {
    require_fuse!();
    let mut w = World::start(opts()).await.unwrap();
    let r = refused_value(&mut w).await;
    if r.is_err() {
        dump_logs(&w);
    }
    r.unwrap();
    w.shutdown().await.unwrap();
}

async fn refused_value(w: &mut World) -> Result<()> {
    let fake = FakeMstconfig::new(&w.dir)?;
    let (reboot, marker) = reboot_marker_script(&w.dir)?;
    let bmc = Bmc::start(w).await?;
    let system = bmc.system().await?;
    provision(
        w,
        RebootMethod::Agent,
        nvconfig(&["PF_TOTAL_SF=20", "PF_BAR2_ENABLE=maybe"]),
    )
    .await?;
    w.start_agent_with("n1", &agent_yaml(&fake, &reboot, &bmc.agent_yaml()))?;

    let d = wait_phase(&mut w.admin, "d0", DpuPhase::Error, T).await?;
    let st = d.status.clone().unwrap_or_default();
    let from = st
        .history
        .iter()
        .rev()
        .find(|t| t.to() == DpuPhase::Error)
        .context("no transition into Error")?;
    assert_eq!(from.from(), DpuPhase::ConfigFwParameters, "{from:?}");
    // mstconfig's own words for the refused value.
    assert!(st.message.contains("Unknown value maybe"), "{}", st.message);
    assert!(st.message.contains("PF_BAR2_ENABLE"), "{}", st.message);
    // What was set anyway is said, and the whole is a failure, not a success.
    assert!(st.message.contains("PF_TOTAL_SF 0 -> 20"), "{}", st.message);
    assert!(st.message.contains("not all applied"), "{}", st.message);
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.ends_with("set PF_BAR2_ENABLE=maybe")),
        "{:?}",
        fake.calls()
    );
    assert!(
        fake.state().contains("PF_BAR2_ENABLE bool 0 0 0"),
        "{}",
        fake.state()
    );

    // No reboot, no power cycle: give the coordinator time to (wrongly) issue one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = get_dpu(&mut w.admin, "d0").await?.context("d0")?;
    assert_eq!(hostplane_tests::phase_of(&d), DpuPhase::Error);
    assert!(
        !d.status
            .unwrap_or_default()
            .history
            .iter()
            .any(|t| t.to() == DpuPhase::Rebooting),
        "never reached Rebooting"
    );
    assert_eq!(bmc.resets_metric("PowerCycle").await?, 0.0);
    assert_eq!(bmc.power_state(&system).await?, "On");
    assert!(!marker.exists(), "the reboot command ran");
    let st = get_node(w, "n1").await?.status.unwrap_or_default();
    assert_eq!(st.last_reboot_kind(), RebootKind::Unspecified);
    assert!(!st.waiting_for_reboot && !st.power_cycle_required, "{st:?}");
    Ok(())
}

/// A plain-HTTP proxy in front of the BMC simulator that, when the
/// `ComputerSystem.Reset` POST has reached the BMC, SIGKILLs the agent
/// before the BMC's answer gets back: the host's power went off before the
/// agent heard from its BMC. Returns the proxy's URL and a receiver that
/// fires once the agent was killed.
async fn killing_proxy(
    bmc: &Bmc,
    agent: std::sync::Arc<std::sync::Mutex<Option<nix::unistd::Pid>>>,
) -> Result<(String, tokio::sync::oneshot::Receiver<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    let (upstream, http) = (bmc.url.clone(), bmc.http.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (upstream, http, agent, tx) = (upstream.clone(), http.clone(), agent.clone(), tx.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let mut rb = http.request(parts.method.clone(), format!("{upstream}{path}"));
            for (k, v) in &parts.headers {
                if !matches!(
                    k.as_str(),
                    "host" | "content-length" | "connection" | "transfer-encoding"
                ) {
                    rb = rb.header(k, v);
                }
            }
            let resp = match rb.body(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    return axum::response::Response::builder()
                        .status(502)
                        .body(axum::body::Body::from(format!("proxy: {e}")))
                        .unwrap();
                }
            };
            if parts.method == axum::http::Method::POST && path.ends_with("/Actions/ComputerSystem.Reset") {
                if let Some(pid) = agent.lock().unwrap().take() {
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
            let mut out = axum::response::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                if !matches!(k.as_str(), "content-length" | "connection" | "transfer-encoding") {
                    out = out.header(k, v);
                }
            }
            let bytes = resp.bytes().await.unwrap_or_default();
            out.body(axum::body::Body::from(bytes)).unwrap()
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_lost_before_the_bmc_answers_is_the_one_power_cycle_and_is_recorded() {
    require_fuse!();
    let mut w = World::start(opts()).await.unwrap();
    let r = power_lost_before_the_bmc_answered(&mut w).await;
    if r.is_err() {
        dump_logs(&w);
    }
    r.unwrap();
    w.shutdown().await.unwrap();
}

async fn power_lost_before_the_bmc_answered(w: &mut World) -> Result<()> {
    let fake = FakeMstconfig::new(&w.dir)?;
    let (reboot, marker) = reboot_marker_script(&w.dir)?;
    let bmc = Bmc::start(w).await?;
    let agent_pid = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (proxy, killed) = killing_proxy(&bmc, agent_pid.clone()).await?;
    provision(w, RebootMethod::Agent, nvconfig(&["PF_TOTAL_SF=20"])).await?;
    let via_proxy = format!(
        "power:\n  bmc:\n    url: {proxy}\n    username: admin\n    password_file: {}\n    poll_interval: 1s\n",
        bmc.password_file.display()
    );
    let own = agent_yaml(&fake, &reboot, &via_proxy);
    w.start_agent_with("n1", &own)?;
    *agent_pid.lock().unwrap() = w
        .agents
        .iter()
        .find(|(n, _)| n == "n1")
        .and_then(|(_, p)| p.pid());
    tokio::time::timeout(T, killed)
        .await
        .context("the agent never asked its BMC for a power cycle")??;
    assert_eq!(bmc.resets_metric("PowerCycle").await?, 1.0);

    // The host comes back from the power cycle; the agent starts again.
    w.crash_agent("n1").await;
    std::fs::write(
        w.dir.join("agents/n1/proc/sys/kernel/random/boot_id"),
        format!("{BOOT_ID_AFTER}\n"),
    )?;
    w.start_agent_with("n1", &own)?;
    let d = wait_phase(&mut w.admin, "d0", DpuPhase::Ready, T).await?;
    let came_back = d
        .status
        .unwrap_or_default()
        .history
        .into_iter()
        .find(|t| t.from() == DpuPhase::Rebooting)
        .context("no transition out of Rebooting")?;
    assert!(
        came_back.message.contains("after a power cycle through its BMC")
            && came_back.message.contains("INTERRUPTED"),
        "{came_back:?}"
    );
    // The node records the power cycle the agent started, as the Dpu's history says.
    let st = get_node(w, "n1").await?.status.unwrap_or_default();
    assert_eq!(st.boot_id, BOOT_ID_AFTER);
    assert_eq!(st.last_reboot_kind(), RebootKind::PowerCycle, "{st:?}");
    assert!(
        st.rebooted_at_ms >= came_back.at_ms - 60_000 && st.rebooted_at_ms <= came_back.at_ms,
        "{st:?}"
    );
    assert_eq!(
        bmc.resets_metric("PowerCycle").await?,
        1.0,
        "never power-cycled twice"
    );
    assert!(!marker.exists(), "the reboot command ran");
    Ok(())
}
