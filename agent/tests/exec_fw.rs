//! Issue 14 through the executor, end to end: `config_fw_parameters` with
//! the fake `mstconfig` (tests/fixtures/fake_mstconfig.sh) and a fake
//! devlink, and `reboot_host { power_cycle }` against the BMC simulator.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hostplane_agent::exec::{
    BoxFuture as ExecFuture, Executor, FlashJobs, HostExecutor, NO_BMC, NicFirmware,
};
use hostplane_agent::flash::{FlashError, FlashReport, FlashRequest};
use hostplane_agent::nicfw::{DevlinkParam, DevlinkParams, Mstconfig, NicFwError};
use hostplane_agent::power::bmc::{BmcConfig, BmcPowerCycle};
use hostplane_proto::v1::{
    BfbRef, Command, CommandOutcome, ConfigFwParameters, FlashProgress, RebootHost, RshimInfo,
    command::Action,
};
use hostplane_sim::bmc::{BmcOptions, BmcSim, Model, PowerState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// PF0 of the DPU behind rshim0 (whose function is .2).
const PF0: &str = "0000:04:00.0";

/// Inventory only: rshim0 on PCIe, rshim1 on USB.
struct Inventory;

impl FlashJobs for Inventory {
    fn discover(&self) -> ExecFuture<'_, Vec<RshimInfo>> {
        Box::pin(async {
            vec![
                RshimInfo {
                    name: "rshim0".into(),
                    pci_address: "0000:04:00.2".into(),
                    dev_info: "BlueField-3(Rev 1)".into(),
                    ..Default::default()
                },
                RshimInfo {
                    name: "rshim1".into(),
                    usb_path: "1-1.4".into(),
                    ..Default::default()
                },
            ]
        })
    }

    fn prepare<'a>(
        &'a self,
        _: &'a BfbRef,
        _: &'a CancellationToken,
    ) -> ExecFuture<'a, Result<PathBuf, FlashError>> {
        unreachable!("no bfb jobs here")
    }

    fn flash(
        &self,
        _: FlashRequest,
        _: mpsc::Sender<FlashProgress>,
        _: CancellationToken,
    ) -> ExecFuture<'_, Result<FlashReport, FlashError>> {
        unreachable!("no bfb jobs here")
    }
}

/// The fake mstconfig with PF_BAR2_ENABLE=False, PER_PF_NUM_SF=False,
/// PF_TOTAL_SF=0, SRIOV_EN=False on device `PF0`.
struct Fake {
    dir: tempfile::TempDir,
    state: PathBuf,
    program: PathBuf,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nvconfig");
        std::fs::write(
            &state,
            format!(
                "{PF0}\nPF_BAR2_ENABLE bool 0 0 0\nPER_PF_NUM_SF bool 0 0 0\nPF_TOTAL_SF num 0 0 0\nSRIOV_EN bool 0 0 0\n"
            ),
        )
        .unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_mstconfig.sh");
        let program = dir.path().join("mstconfig");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nFAKE_MSTCONFIG_STATE='{}' exec '{}' \"$@\"\n",
                state.display(),
                fixture.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir, state, program }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(format!("{}.log", self.state.display()))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(&self.state).unwrap()
    }

    fn executor(&self, devlink: Option<Arc<dyn DevlinkParams>>) -> HostExecutor {
        HostExecutor::new(Arc::new(Inventory), vec!["true".into()]).with_nic_firmware(NicFirmware {
            mstconfig: Mstconfig::new(&self.program),
            devlink,
        })
    }
}

/// A devlink device `pci/<PF0>` with enable_sriov and total_vfs in cmode
/// permanent (and a runtime-only parameter), recording sets; `refuse`
/// makes every set fail with devlink's words; `cancel` is cancelled at the
/// first show.
#[derive(Default)]
struct FakeDevlink {
    params: Mutex<HashMap<String, (String, String)>>,
    sets: Mutex<Vec<String>>,
    shows: Mutex<u32>,
    refuse: bool,
    cancel: Option<CancellationToken>,
}

impl FakeDevlink {
    fn new() -> FakeDevlink {
        let params = HashMap::from([
            (
                "enable_sriov".to_string(),
                ("permanent".to_string(), "False(0)".to_string()),
            ),
            (
                "total_vfs".to_string(),
                ("permanent".to_string(), "8".to_string()),
            ),
            (
                "flow_steering_mode".to_string(),
                ("runtime".to_string(), "dmfs".to_string()),
            ),
        ]);
        FakeDevlink {
            params: Mutex::new(params),
            ..Default::default()
        }
    }
}

impl DevlinkParams for FakeDevlink {
    fn show<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<Vec<DevlinkParam>, NicFwError>> {
        *self.shows.lock().unwrap() += 1;
        if let Some(c) = &self.cancel {
            c.cancel();
        }
        let r = if handle == format!("pci/{PF0}") {
            let mut v: Vec<DevlinkParam> = self
                .params
                .lock()
                .unwrap()
                .iter()
                .map(|(n, (c, v))| DevlinkParam {
                    name: n.clone(),
                    values: vec![(c.clone(), v.clone())],
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        } else {
            Err(NicFwError::Tool {
                program: "devlink".into(),
                action: "param show",
                device: handle.into(),
                message: "kernel answers: No such device".into(),
            })
        };
        Box::pin(async { r })
    }

    fn set<'a>(
        &'a self,
        handle: &'a str,
        name: &'a str,
        value: &'a str,
        cmode: &'a str,
    ) -> BoxFuture<'a, Result<(), NicFwError>> {
        self.sets
            .lock()
            .unwrap()
            .push(format!("{handle} {name} {value} {cmode}"));
        let r = if self.refuse {
            Err(NicFwError::Tool {
                program: "devlink".into(),
                action: "param set",
                device: handle.into(),
                message:
                    "Error: devlink: Value is out of range. kernel answers: Numerical result out of range"
                        .into(),
            })
        } else {
            let shown = match value {
                "true" => "True(1)".to_string(),
                "false" => "False(0)".to_string(),
                v => v.to_string(),
            };
            self.params
                .lock()
                .unwrap()
                .insert(name.to_string(), (cmode.to_string(), shown));
            Ok(())
        };
        Box::pin(async { r })
    }
}

fn fw_cmd(rshim: &str, pci: &str, power_cycle: bool, params: &[(&str, &str)]) -> Command {
    Command {
        id: "c-fw".into(),
        dpu: "dpu-a".into(),
        rshim: rshim.into(),
        action: Some(Action::ConfigFwParameters(ConfigFwParameters {
            nic_firmware: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pci_address: pci.into(),
            host_power_cycle_required: power_cycle,
        })),
    }
}

async fn run(ex: &HostExecutor, c: Command) -> (CommandOutcome, String) {
    run_with(ex, c, CancellationToken::new()).await
}

async fn run_with(ex: &HostExecutor, c: Command, cancel: CancellationToken) -> (CommandOutcome, String) {
    let r = run_result(ex, c, cancel).await;
    (r.outcome(), r.message)
}

async fn run_result(
    ex: &HostExecutor,
    c: Command,
    cancel: CancellationToken,
) -> hostplane_proto::v1::CommandResult {
    let (tx, _rx) = mpsc::channel(1);
    ex.execute(c, tx, cancel).await
}

#[tokio::test]
async fn sets_what_differs_on_the_rshims_pf0_and_says_it_takes_effect_at_the_next_reboot() {
    let fake = Fake::new();
    let ex = fake.executor(None);
    let (o, m) = run(
        &ex,
        fw_cmd(
            "rshim0",
            "",
            false,
            &[("PF_TOTAL_SF", "20"), ("PF_BAR2_ENABLE", "0")],
        ),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.contains("PF_TOTAL_SF 0 -> 20 via mstconfig"), "{m}");
    assert!(m.contains("PF_BAR2_ENABLE=0 unchanged"), "{m}");
    assert!(m.contains("take effect at the next reboot"), "{m}");
    assert!(!m.contains("power cycle"), "{m}");
    // The device is PF0, derived from rshim0's 0000:04:00.2.
    assert_eq!(
        fake.calls(),
        [
            format!("-d {PF0} -e query PF_BAR2_ENABLE PF_TOTAL_SF"),
            format!("-d {PF0} -y set PF_TOTAL_SF=20"),
            format!("-d {PF0} -e query PF_TOTAL_SF"),
        ]
    );
    assert!(fake.state().contains("PF_TOTAL_SF num 0 0 20"));

    // Again: nothing differs, nothing set.
    let (o, m) = run(&ex, fw_cmd("rshim0", "", false, &[("PF_TOTAL_SF", "20")])).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(
        m.contains("nothing changed") && m.contains("PF_TOTAL_SF=20 unchanged"),
        "{m}"
    );
    assert_eq!(fake.calls().len(), 4, "{:?}", fake.calls());
}

#[tokio::test]
async fn a_power_cycle_requirement_is_in_the_message() {
    let fake = Fake::new();
    let ex = fake.executor(None);
    let cmd = || fw_cmd("rshim0", "", true, &[("PER_PF_NUM_SF", "1")]);
    let r = run_result(&ex, cmd(), CancellationToken::new()).await;
    let m = &r.message;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{m}");
    assert!(m.contains("PER_PF_NUM_SF False(0) -> True(1)"), "{m}");
    assert!(
        m.contains("the running value of PER_PF_NUM_SF does not match yet")
            && m.contains("only after a host power cycle"),
        "{m}"
    );
    assert!(!m.contains("next reboot"), "{m}");
    assert!(r.power_cycle_required, "{m}");
    // The set changed the next-boot value only: the firmware runs the old one until it reloads.
    assert!(
        fake.state().contains("PER_PF_NUM_SF bool 0 0 1"),
        "{}",
        fake.state()
    );

    // Again before any power cycle: nothing to set, but the value set by the earlier attempt is
    // still not in effect.
    let r = run_result(&ex, cmd(), CancellationToken::new()).await;
    let m = &r.message;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{m}");
    assert!(
        m.contains("nothing changed") && m.contains("PER_PF_NUM_SF=1 unchanged"),
        "{m}"
    );
    assert!(r.power_cycle_required, "{m}");

    // After a power cycle the running value matches: nothing pending.
    let state = fake
        .state()
        .replace("PER_PF_NUM_SF bool 0 0 1", "PER_PF_NUM_SF bool 0 1 1");
    std::fs::write(&fake.state, state).unwrap();
    let r = run_result(&ex, cmd(), CancellationToken::new()).await;
    let m = &r.message;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{m}");
    assert!(!r.power_cycle_required, "{m}");
    assert!(m.contains("no host power cycle is needed"), "{m}");
}

#[tokio::test]
async fn power_cycle_required_only_with_the_flavors_word_and_on_success() {
    // Values set without host_power_cycle_required: a reboot is enough.
    let fake = Fake::new();
    let ex = fake.executor(None);
    let r = run_result(
        &ex,
        fw_cmd("rshim0", "", false, &[("PF_TOTAL_SF", "20")]),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{}", r.message);
    assert!(!r.power_cycle_required, "{}", r.message);

    // One value set, one refused: FAILED, and no power cycle is asked for.
    let fake = Fake::new();
    let r = run_result(
        &fake.executor(None),
        fw_cmd(
            "rshim0",
            "",
            true,
            &[("PF_TOTAL_SF", "20"), ("PF_BAR2_ENABLE", "maybe")],
        ),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome(), CommandOutcome::Failed, "{}", r.message);
    assert!(!r.power_cycle_required, "{}", r.message);

    // Disabled on this agent: SKIPPED, nothing pending.
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()]);
    let r = run_result(
        &ex,
        fw_cmd("rshim0", "", true, &[("PF_TOTAL_SF", "20")]),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome(), CommandOutcome::Skipped, "{}", r.message);
    assert!(!r.power_cycle_required, "{}", r.message);
}

#[tokio::test]
async fn a_devlink_parameter_set_without_a_running_value_is_pending() {
    // enable_sriov is listed in cmode permanent only: its running value is unknown, and the set
    // counts as pending; total_vfs is already 8 and unknown-running: not set, not pending.
    let fake = Fake::new();
    let devlink = Arc::new(FakeDevlink::new());
    let ex = fake.executor(Some(devlink.clone()));
    let r = run_result(
        &ex,
        fw_cmd("rshim0", "", true, &[("SRIOV_EN", "1"), ("NUM_OF_VFS", "8")]),
        CancellationToken::new(),
    )
    .await;
    let m = &r.message;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{m}");
    assert!(r.power_cycle_required, "{m}");
    assert!(
        m.contains("the running value of SRIOV_EN does not match yet"),
        "{m}"
    );
    // Only NUM_OF_VFS, unchanged: nothing known to be pending.
    let r = run_result(
        &ex,
        fw_cmd("rshim0", "", true, &[("NUM_OF_VFS", "8")]),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(r.outcome(), CommandOutcome::Succeeded, "{}", r.message);
    assert!(!r.power_cycle_required, "{}", r.message);
}

#[tokio::test]
async fn the_commands_pci_address_wins_over_the_rshim() {
    let fake = Fake::new();
    // rshim1 is USB (no PCI address): the command's address is used.
    let (o, m) = run(
        &fake.executor(None),
        fw_cmd("rshim1", "04:00.0", false, &[("PF_TOTAL_SF", "4")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(
        fake.calls()[0].starts_with(&format!("-d {PF0} ")),
        "{:?}",
        fake.calls()
    );

    let (o, m) = run(
        &fake.executor(None),
        fw_cmd("rshim0", "-y", false, &[("PF_TOTAL_SF", "4")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(m.contains("pci_address \"-y\" is not a PCI address"), "{m}");
    assert_eq!(fake.calls().len(), 3, "nothing run for a bad address");
}

#[tokio::test]
async fn no_pci_address_anywhere_fails_naming_the_rshim() {
    let fake = Fake::new();
    for (rshim, words) in [
        ("rshim1", "rshim device rshim1 reports no PCI address"),
        (
            "rshim9",
            "rshim device rshim9 is not on this host (it has: rshim0, rshim1)",
        ),
        ("", "neither a pci_address nor an rshim device"),
    ] {
        let (o, m) = run(
            &fake.executor(None),
            fw_cmd(rshim, "", false, &[("PF_TOTAL_SF", "4")]),
        )
        .await;
        assert_eq!(o, CommandOutcome::Failed, "{m}");
        assert!(m.contains(words), "{m:?} lacks {words:?}");
    }
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn a_refused_value_fails_with_the_tools_words_and_changes_nothing() {
    let fake = Fake::new();
    let before = fake.state();
    let (o, m) = run(
        &fake.executor(None),
        fw_cmd(
            "rshim0",
            "",
            false,
            &[("PF_BAR2_ENABLE", "maybe"), ("PF_TOTAL_SF", "20")],
        ),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(
        m.contains("PF_BAR2_ENABLE=maybe failed via mstconfig: Unknown value maybe"),
        "{m}"
    );
    // The other one was set and verified, and the message says so: nothing
    // half-applied passes for success.
    assert!(m.contains("PF_TOTAL_SF 0 -> 20"), "{m}");
    assert!(m.contains("not all applied"), "{m}");
    assert_ne!(fake.state(), before);
    assert!(fake.state().contains("PF_BAR2_ENABLE bool 0 0 0"));
}

#[tokio::test]
async fn an_unknown_parameter_fails_with_the_tools_words() {
    let fake = Fake::new();
    let before = fake.state();
    let (o, m) = run(
        &fake.executor(None),
        fw_cmd("rshim0", "", false, &[("NO_SUCH_PARAM", "1")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(m.contains("Unknown Parameter NO_SUCH_PARAM"), "{m}");
    assert_eq!(fake.state(), before);
}

#[tokio::test]
async fn a_malformed_parameter_fails_before_any_tool_runs() {
    let fake = Fake::new();
    let (o, m) = run(
        &fake.executor(None),
        fw_cmd("rshim0", "", false, &[("PF_TOTAL_SF", "20"), ("-d", "x")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(
        m.contains("parameter name \"-d\"") && m.contains("none of them"),
        "{m}"
    );
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn a_missing_mstconfig_fails_naming_it_and_the_mstflint_package() {
    let fake = Fake::new();
    let missing = fake.dir.path().join("no-such-mstconfig");
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()]).with_nic_firmware(NicFirmware {
        mstconfig: Mstconfig::new(&missing),
        devlink: None,
    });
    let (o, m) = run(&ex, fw_cmd("rshim0", "", false, &[("PF_TOTAL_SF", "20")])).await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(m.contains(&missing.display().to_string()), "{m}");
    assert!(m.contains("mstflint"), "{m}");
}

#[tokio::test]
async fn devlink_is_preferred_for_the_parameters_it_exposes() {
    let fake = Fake::new();
    let devlink = Arc::new(FakeDevlink::new());
    let ex = fake.executor(Some(devlink.clone()));
    let (o, m) = run(
        &ex,
        fw_cmd(
            "rshim0",
            "",
            false,
            &[("SRIOV_EN", "1"), ("NUM_OF_VFS", "8"), ("PF_TOTAL_SF", "20")],
        ),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(
        m.contains("SRIOV_EN False(0) -> True(1) via devlink (enable_sriov, cmode permanent)"),
        "{m}"
    );
    assert!(
        m.contains("NUM_OF_VFS=8 unchanged, via devlink (total_vfs"),
        "{m}"
    );
    assert!(m.contains("PF_TOTAL_SF 0 -> 20 via mstconfig"), "{m}");
    assert_eq!(
        *devlink.sets.lock().unwrap(),
        [format!("pci/{PF0} enable_sriov true permanent")]
    );
    // The routing show, then the verifying one.
    assert_eq!(*devlink.shows.lock().unwrap(), 2);
    // mstconfig never saw SRIOV_EN (its own SRIOV_EN stays False).
    assert!(
        fake.calls().iter().all(|c| !c.contains("SRIOV_EN")),
        "{:?}",
        fake.calls()
    );
    assert!(fake.state().contains("SRIOV_EN bool 0 0 0"));
}

#[tokio::test]
async fn devlink_off_or_unusable_means_mstconfig() {
    // No devlink (nic_firmware.devlink: off): SRIOV_EN through mstconfig.
    let fake = Fake::new();
    let (o, m) = run(
        &fake.executor(None),
        fw_cmd("rshim0", "", false, &[("SRIOV_EN", "1")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.contains("SRIOV_EN False(0) -> True(1) via mstconfig"), "{m}");

    // devlink cannot read the device: noted, and mstconfig does it.
    let fake = Fake::new();
    let devlink = Arc::new(FakeDevlink::new());
    let (o, m) = run(
        &fake.executor(Some(devlink.clone())),
        fw_cmd("rshim0", "0000:04:00.1", false, &[("SRIOV_EN", "1")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    // (04:00.1 is not the fake mstconfig's device either: its own words.)
    assert!(
        m.contains("devlink not used") && m.contains("No such device"),
        "{m}"
    );
    assert!(m.contains("Failed to open device: 0000:04:00.1"), "{m}");
    assert!(devlink.sets.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_value_devlink_refuses_fails_with_its_words() {
    let fake = Fake::new();
    let devlink = Arc::new(FakeDevlink {
        refuse: true,
        ..FakeDevlink::new()
    });
    let (o, m) = run(
        &fake.executor(Some(devlink.clone())),
        fw_cmd("rshim0", "", false, &[("NUM_OF_VFS", "100000")]),
    )
    .await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(m.contains("NUM_OF_VFS=100000 failed via devlink"), "{m}");
    assert!(m.contains("Numerical result out of range"), "{m}");
    assert_eq!(
        *devlink.sets.lock().unwrap(),
        [format!("pci/{PF0} total_vfs 100000 permanent")]
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn cancellation_stops_between_tool_calls() {
    let fake = Fake::new();
    let cancel = CancellationToken::new();
    // Cancelled while devlink's show runs: nothing is set by either tool.
    let devlink = Arc::new(FakeDevlink {
        cancel: Some(cancel.clone()),
        ..FakeDevlink::new()
    });
    let (o, m) = run_with(
        &fake.executor(Some(devlink.clone())),
        fw_cmd("rshim0", "", false, &[("SRIOV_EN", "1"), ("PF_TOTAL_SF", "20")]),
        cancel,
    )
    .await;
    assert_eq!(o, CommandOutcome::Cancelled, "{m}");
    assert!(m.contains("not attempted: cancelled"), "{m}");
    assert!(devlink.sets.lock().unwrap().is_empty());
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
}

#[tokio::test]
async fn disabled_or_empty_is_skipped() {
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()]);
    let (o, m) = run(&ex, fw_cmd("rshim0", "", false, &[("SRIOV_EN", "1")])).await;
    assert_eq!(o, CommandOutcome::Skipped, "{m}");
    assert!(
        m.contains("nic_firmware.enabled: false") && m.contains("not applied: SRIOV_EN"),
        "{m}"
    );
    let fake = Fake::new();
    let (o, m) = run(&fake.executor(None), fw_cmd("rshim0", "", false, &[])).await;
    assert_eq!(o, CommandOutcome::Skipped, "{m}");
    assert!(m.contains("nothing to do"), "{m}");
    assert!(fake.calls().is_empty());
}

fn reboot(power_cycle: bool) -> Command {
    Command {
        id: "c-reboot".into(),
        dpu: "dpu-a".into(),
        rshim: "rshim0".into(),
        action: Some(Action::RebootHost(RebootHost { power_cycle })),
    }
}

#[tokio::test]
async fn a_power_cycle_goes_through_the_bmc_and_the_system_goes_off_then_on() {
    let bmc = BmcSim::spawn(BmcOptions {
        username: "operator".into(),
        password: "pw".into(),
        ..BmcOptions::new("node-1", Model::DgxH100)
    })
    .unwrap();
    bmc.set_power_transition(Duration::from_millis(800));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "pw\n").unwrap();
    let cfg = BmcConfig {
        url: bmc.url(),
        username: "operator".into(),
        password_file: Some(pw),
        min_request_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()])
        .with_bmc(Arc::new(BmcPowerCycle::new(cfg, None)));

    // power_cycle: false is the reboot command, not the BMC.
    let (o, m) = run(&ex, reboot(false)).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.contains("reboot issued with `true`"), "{m}");
    assert_eq!(bmc.power_cycles(), 0);

    let (o, m) = run(&ex, reboot(true)).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(
        m.starts_with(&format!("power cycle issued through the BMC at {}", bmc.url())),
        "{m}"
    );
    assert!(m.contains("/redfish/v1/Systems/DGX"), "{m}");
    assert_eq!(bmc.power_cycles(), 1);
    assert_eq!(bmc.power_state(), PowerState::Off, "off at once");
    let start = std::time::Instant::now();
    while bmc.power_state() != PowerState::On {
        assert!(start.elapsed() < Duration::from_secs(10), "never came back on");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bmc.power_cycles(), 1);
    bmc.shutdown().await;
}

#[tokio::test]
async fn a_power_cycle_the_bmc_refuses_fails_with_its_words() {
    let bmc = BmcSim::spawn(BmcOptions::new("node-2", Model::DgxH100)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "wrong\n").unwrap();
    let cfg = BmcConfig {
        url: bmc.url(),
        username: "admin".into(),
        password_file: Some(pw.clone()),
        min_request_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()])
        .with_bmc(Arc::new(BmcPowerCycle::new(cfg, None)));
    let (o, m) = run(&ex, reboot(true)).await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(
        m.contains("power cycle through the BMC at") && m.contains("401"),
        "{m}"
    );
    assert!(m.contains(&pw.display().to_string()), "{m}");
    assert_eq!(bmc.power_cycles(), 0);
    assert_eq!(bmc.power_state(), PowerState::On);
    bmc.shutdown().await;
}

#[tokio::test]
async fn no_bmc_means_skipped_for_an_external_power_cycle() {
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["false".into()]);
    let (o, m) = run(&ex, reboot(true)).await;
    assert_eq!(o, CommandOutcome::Skipped, "{m}");
    assert_eq!(
        m,
        "no BMC configured on this agent (power.bmc); the node needs an external power cycle"
    );
    assert_eq!(m, NO_BMC);
}

#[tokio::test]
async fn a_power_cycle_goes_through_the_pollers_session_when_there_is_one() {
    use hostplane_agent::power::bmc::{RequestCounts, RequestOutcome, poll};
    let bmc = BmcSim::spawn(BmcOptions::new("node-3", Model::Gb200)).unwrap();
    bmc.set_power_transition(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "admin\n").unwrap();
    let cfg = BmcConfig {
        url: bmc.url(),
        username: "admin".into(),
        password_file: Some(pw),
        // One read after connecting, then none while the test runs.
        poll_interval: Duration::from_secs(3600),
        min_request_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let counts = RequestCounts::default();
    let tasks = tokio_util::task::TaskTracker::new();
    let stop = CancellationToken::new();
    let link = poll::spawn(cfg.clone(), counts.clone(), &tasks, stop.clone());
    link.wait_client().await.expect("the poller connects");
    let start = std::time::Instant::now();
    while link.readings(std::time::Instant::now()).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no first reading");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ok = || counts.get_or_create(&RequestOutcome { outcome: "ok" }).get();
    let before = ok();
    let ex = HostExecutor::new(Arc::new(Inventory), vec!["true".into()])
        .with_bmc(Arc::new(BmcPowerCycle::new(cfg, Some(link))));
    let (o, m) = run(&ex, reboot(true)).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert_eq!(bmc.power_cycles(), 1);
    // The service root, the Systems collection, the System, the POST: on
    // the poller's session (no login of its own).
    assert_eq!(ok() - before, 4);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    bmc.shutdown().await;
}
