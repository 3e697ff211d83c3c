//! `nicfw::apply` through `Mstconfig` against a fake `mstconfig`
//! (tests/fixtures/fake_mstconfig.sh) that prints mstflint's real query and
//! set formats and error texts, keeping the NV config in a state file.

use std::path::{Path, PathBuf};

use hostplane_agent::nicfw::{ApplyReport, Mstconfig, NicConfigTool, Overall, ParamOutcome, apply};

const DEVICE: &str = "/dev/mst/mt41692_pciconf0";

struct Fake {
    _dir: tempfile::TempDir,
    state: PathBuf,
    program: PathBuf,
}

impl Fake {
    /// A fake whose NV config is PF_BAR2_ENABLE=False, PER_PF_NUM_SF=False,
    /// PF_TOTAL_SF=0 (next boot), with `extra_env` set for the fake.
    fn new(extra_env: &str) -> Fake {
        Self::with_params(extra_env, "")
    }

    /// [`Fake::new`] with `more` (state lines: `NAME TYPE DEF CUR NEXT`,
    /// `NAME[i] ...` for an array's elements) after the three parameters.
    fn with_params(extra_env: &str, more: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nvconfig");
        std::fs::write(
            &state,
            format!(
                "{DEVICE}\nPF_BAR2_ENABLE bool 0 0 0\nPER_PF_NUM_SF bool 0 0 0\nPF_TOTAL_SF num 0 0 0\n{more}"
            ),
        )
        .unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_mstconfig.sh");
        let program = dir.path().join("mstconfig");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nFAKE_MSTCONFIG_STATE='{}' {extra_env} exec '{}' \"$@\"\n",
                state.display(),
                fixture.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake {
            _dir: dir,
            state,
            program,
        }
    }

    fn tool(&self) -> Mstconfig {
        Mstconfig::new(&self.program)
    }

    /// The invocations the fake received, one line each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(format!("{}.log", self.state.display()))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn sets(&self) -> Vec<String> {
        self.calls().into_iter().filter(|c| c.contains(" set ")).collect()
    }

    fn state(&self) -> String {
        std::fs::read_to_string(&self.state).unwrap()
    }
}

fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn outcome<'a>(r: &'a ApplyReport, name: &str) -> &'a ParamOutcome {
    &r.params.iter().find(|p| p.name == name).unwrap().outcome
}

#[tokio::test]
async fn query_reads_current_and_next_boot_columns() {
    let fake = Fake::new("");
    let q = fake.tool().query(DEVICE).await.unwrap();
    let names: Vec<&str> = q.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["PF_BAR2_ENABLE", "PER_PF_NUM_SF", "PF_TOTAL_SF"]);
    assert_eq!(q[0].current.as_deref(), Some("False(0)"));
    assert_eq!(q[0].next_boot, "False(0)");
    assert_eq!(q[2].next_boot, "0");
    assert_eq!(fake.calls(), [format!("-d {DEVICE} -e query")]);
}

#[tokio::test]
async fn nothing_differs_nothing_set() {
    let fake = Fake::new("");
    let desired = params(&[
        ("PF_BAR2_ENABLE", "0"),
        ("PF_TOTAL_SF", "0"),
        ("PER_PF_NUM_SF", "False"),
    ]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::Unchanged, "{r}");
    assert!(
        r.params.iter().all(|p| p.outcome == ParamOutcome::Unchanged),
        "{r:?}"
    );
    assert!(fake.sets().is_empty(), "{:?}", fake.calls());
    assert_eq!(fake.calls().len(), 1, "one query, no verification needed");
}

#[tokio::test]
async fn only_the_differing_parameter_is_set_and_verified() {
    let fake = Fake::new("");
    let desired = params(&[("PF_BAR2_ENABLE", "0"), ("PF_TOTAL_SF", "20")]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::RebootRequired, "{r}");
    assert!(r.succeeded());
    assert_eq!(outcome(&r, "PF_BAR2_ENABLE"), &ParamOutcome::Unchanged);
    assert_eq!(
        outcome(&r, "PF_TOTAL_SF"),
        &ParamOutcome::Set {
            from: "0".into(),
            to: "20".into()
        }
    );
    assert_eq!(fake.sets(), [format!("-d {DEVICE} -y set PF_TOTAL_SF=20")]);
    // query, set, verifying query
    assert_eq!(fake.calls().len(), 3, "{:?}", fake.calls());
    assert!(
        fake.state().contains("PF_TOTAL_SF num 0 0 20"),
        "{}",
        fake.state()
    );
    assert!(r.to_string().contains("next reboot"), "{r}");

    // Applying again is a no-op.
    let again = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(again.overall(), Overall::Unchanged, "{again}");
}

#[tokio::test]
async fn boolean_set_reports_the_value_as_the_tool_shows_it() {
    let fake = Fake::new("");
    let r = apply(&fake.tool(), DEVICE, &params(&[("PER_PF_NUM_SF", "1")])).await;
    assert_eq!(
        outcome(&r, "PER_PF_NUM_SF"),
        &ParamOutcome::Set {
            from: "False(0)".into(),
            to: "True(1)".into()
        }
    );
}

#[tokio::test]
async fn unknown_name_fails_with_the_tools_words_and_nothing_else_claimed() {
    let fake = Fake::new("");
    let desired = params(&[("NO_SUCH_PARAM", "1"), ("PF_BAR2_ENABLE", "False(0)")]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    assert!(!r.succeeded());
    assert_eq!(
        outcome(&r, "NO_SUCH_PARAM"),
        &ParamOutcome::Failed("Unknown Parameter NO_SUCH_PARAM".into())
    );
    assert_eq!(outcome(&r, "PF_BAR2_ENABLE"), &ParamOutcome::Unchanged);
    assert!(fake.state().contains("PF_BAR2_ENABLE bool 0 0 0"));
    assert!(!fake.state().contains("NO_SUCH_PARAM"));
}

#[tokio::test]
async fn refused_value_fails_with_the_tools_words_and_changes_nothing() {
    let fake = Fake::new("");
    let before = fake.state();
    let desired = params(&[("PF_BAR2_ENABLE", "maybe"), ("PF_TOTAL_SF", "twenty")]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    assert_eq!(
        outcome(&r, "PF_BAR2_ENABLE"),
        &ParamOutcome::Failed("Unknown value maybe".into())
    );
    assert_eq!(
        outcome(&r, "PF_TOTAL_SF"),
        &ParamOutcome::Failed("argument is not a number: twenty".into())
    );
    assert_eq!(fake.state(), before);
}

#[tokio::test]
async fn one_refused_one_set_is_still_a_failure_overall() {
    let fake = Fake::new("");
    let desired = params(&[("PF_TOTAL_SF", "20"), ("PF_BAR2_ENABLE", "maybe")]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert!(
        matches!(outcome(&r, "PF_TOTAL_SF"), ParamOutcome::Set { .. }),
        "{r}"
    );
    assert!(
        matches!(outcome(&r, "PF_BAR2_ENABLE"), ParamOutcome::Failed(_)),
        "{r}"
    );
    assert_eq!(r.overall(), Overall::Failed);
}

#[tokio::test]
async fn a_set_the_verifying_query_does_not_show_fails() {
    let fake = Fake::new("FAKE_MSTCONFIG_LOSE_SETS=1");
    let r = apply(&fake.tool(), DEVICE, &params(&[("PF_TOTAL_SF", "20")])).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    match outcome(&r, "PF_TOTAL_SF") {
        ParamOutcome::Failed(why) => assert!(why.contains("reads 0 afterwards"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_device_is_the_tools_error() {
    let fake = Fake::new("");
    let r = apply(&fake.tool(), "/dev/mst/nope", &params(&[("PF_TOTAL_SF", "20")])).await;
    assert_eq!(r.overall(), Overall::Failed);
    let err = r.error.as_deref().unwrap();
    assert!(err.contains("Failed to open device: /dev/mst/nope"), "{err}");
    assert!(fake.sets().is_empty());
}

#[tokio::test]
async fn missing_tool_names_it_and_the_mstflint_package() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mstconfig");
    let r = apply(
        &Mstconfig::new(&missing),
        DEVICE,
        &params(&[("PF_TOTAL_SF", "20")]),
    )
    .await;
    assert_eq!(r.overall(), Overall::Failed);
    let err = r.error.as_deref().unwrap();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("mstflint"), "{err}");
    assert!(matches!(outcome(&r, "PF_TOTAL_SF"), ParamOutcome::Failed(_)));
}

#[tokio::test]
async fn a_hung_tool_is_killed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("mstconfig");
    std::fs::write(&program, "#!/bin/sh\nexec sleep 30\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tool = Mstconfig::new(&program).with_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    let r = apply(&tool, DEVICE, &params(&[("PF_TOTAL_SF", "20")])).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(r.overall(), Overall::Failed);
    let err = r.error.as_deref().unwrap();
    assert!(err.contains("did not finish within"), "{err}");
    assert!(err.contains("-e query"), "{err}");
}

mod value_comparison {
    use hostplane_agent::nicfw::value_matches;
    use proptest::prelude::*;

    /// The ways a value may be written: as mlxconfig shows it and as a
    /// Flavor may ask for it.
    fn spellings(n: u64) -> Vec<String> {
        vec![
            n.to_string(),
            format!("{n:#x}"),
            format!("{n:#X}").replacen("0X", "0x", 1),
            format!("LABEL({n})"),
        ]
    }

    proptest! {
        #[test]
        fn every_spelling_of_a_number_matches_every_other(n in any::<u64>(), i in 0usize..4, j in 0usize..4) {
            let s = spellings(n);
            prop_assert!(value_matches(&s[i], &s[j]), "{} vs {}", s[i], s[j]);
        }

        #[test]
        fn different_numbers_never_match(n in any::<u64>(), m in any::<u64>(), i in 0usize..4, j in 0usize..4) {
            prop_assume!(n != m);
            prop_assert!(!value_matches(&spellings(n)[i], &spellings(m)[j]));
        }

        #[test]
        fn booleans_match_their_number_and_label_in_any_case(b in any::<bool>(), upper in any::<bool>(), which in 0usize..3) {
            let shown = if b { "True(1)" } else { "False(0)" };
            let label = if b { "true" } else { "false" };
            let label = if upper { label.to_ascii_uppercase() } else { label.to_string() };
            let desired = [(b as u8).to_string(), label, shown.to_string()];
            prop_assert!(value_matches(shown, &desired[which]));
            let other = if b { "False(0)" } else { "True(1)" };
            prop_assert!(!value_matches(other, &desired[which]));
        }

        #[test]
        fn matching_is_symmetric(a in "[A-Za-z_]{0,6}(\\([0-9]{1,3}\\))?|[0-9]{1,4}|0x[0-9a-f]{1,3}",
                                 b in "[A-Za-z_]{0,6}(\\([0-9]{1,3}\\))?|[0-9]{1,4}|0x[0-9a-f]{1,3}") {
            prop_assert_eq!(value_matches(&a, &b), value_matches(&b, &a), "{} vs {}", a, b);
        }
    }
}

/// One test through the real kernel: netdevsim's devlink parameters read
/// (and one set) through `Devlink`, iproute2's `devlink`. Skipped, saying
/// why, where the kernel has no netdevsim or devlink is missing.
#[tokio::test]
async fn devlink_reads_and_sets_a_real_netdevsim_parameter() {
    use hostplane_agent::nicfw::{Devlink, DevlinkParams};
    let bus = Path::new("/sys/bus/netdevsim");
    if !bus.exists() {
        let _ = std::process::Command::new("modprobe").arg("netdevsim").status();
    }
    if !bus.join("new_device").exists() {
        eprintln!("SKIPPED: this kernel has no netdevsim (/sys/bus/netdevsim; modprobe netdevsim failed)");
        return;
    }
    let devlink = Devlink::default();
    let id = 7000 + std::process::id() % 1000;
    std::fs::write(bus.join("new_device"), format!("{id} 1")).unwrap();
    struct Remove(PathBuf, u32);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("del_device"), self.1.to_string());
        }
    }
    let _remove = Remove(bus.to_path_buf(), id);
    let handle = format!("netdevsim/netdevsim{id}");
    let mut params = Vec::new();
    for _ in 0..50 {
        match devlink.show(&handle).await {
            Ok(p) if !p.is_empty() => {
                params = p;
                break;
            }
            Err(hostplane_agent::nicfw::NicFwError::DevlinkMissing { .. }) => {
                eprintln!("SKIPPED: no devlink binary (iproute2)");
                return;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let test1 = params
        .iter()
        .find(|p| p.name == "test1")
        .unwrap_or_else(|| panic!("netdevsim has no test1 param: {params:?}"));
    assert_eq!(test1.value("runtime"), Some("True(1)"), "{test1:?}");
    devlink.set(&handle, "test1", "false", "runtime").await.unwrap();
    let after = devlink.show(&handle).await.unwrap();
    let test1 = after.iter().find(|p| p.name == "test1").unwrap();
    assert_eq!(test1.value("runtime"), Some("False(0)"), "{test1:?}");
    // A cmode the parameter does not have is refused in devlink's words.
    let err = devlink
        .set(&handle, "test1", "true", "permanent")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&handle), "{err}");
}

/// Cancels its token after the first set it passes on.
struct CancelAfterSet {
    inner: Mstconfig,
    cancel: tokio_util::sync::CancellationToken,
}

impl NicConfigTool for CancelAfterSet {
    async fn query(
        &self,
        device: &str,
    ) -> Result<Vec<hostplane_agent::nicfw::NvParam>, hostplane_agent::nicfw::NicFwError> {
        self.inner.query(device).await
    }

    async fn set(
        &self,
        device: &str,
        params: &[(String, String)],
    ) -> Result<(), hostplane_agent::nicfw::NicFwError> {
        let r = self.inner.set(device, params).await;
        self.cancel.cancel();
        r
    }
}

#[tokio::test]
async fn cancelled_between_sets_stops_and_claims_nothing_unverified() {
    use hostplane_agent::nicfw::{ApplyOptions, apply_with};
    let fake = Fake::new("");
    let cancel = tokio_util::sync::CancellationToken::new();
    let tool = CancelAfterSet {
        inner: fake.tool(),
        cancel: cancel.clone(),
    };
    let desired = params(&[
        ("PF_TOTAL_SF", "20"),
        ("PF_BAR2_ENABLE", "1"),
        ("PER_PF_NUM_SF", "0"),
    ]);
    let opts = ApplyOptions {
        cancel: Some(&cancel),
        ..Default::default()
    };
    let r = apply_with(&tool, DEVICE, &desired, opts).await;
    assert_eq!(r.overall(), Overall::Cancelled, "{r}");
    assert!(!r.succeeded());
    // The first was set (the fake kept it) but not verified: not claimed.
    match outcome(&r, "PF_TOTAL_SF") {
        ParamOutcome::Failed(why) => assert!(why.contains("not verified"), "{why}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        outcome(&r, "PF_BAR2_ENABLE"),
        &ParamOutcome::Failed("not attempted: cancelled".into())
    );
    // Already as asked: no tool call needed, so still Unchanged.
    assert_eq!(outcome(&r, "PER_PF_NUM_SF"), &ParamOutcome::Unchanged);
    // query, one set; no second set, no verifying query.
    assert_eq!(fake.calls().len(), 2, "{:?}", fake.calls());
    assert_eq!(fake.sets(), [format!("-d {DEVICE} -y set PF_TOTAL_SF=20")]);
    assert!(r.to_string().contains("cancelled"), "{r}");
}

/// MODULE_SPLIT_M0, an array of four, element 2 already 1 at the next boot.
const ARRAY: &str = "MODULE_SPLIT_M0[0] num 0 0 0\nMODULE_SPLIT_M0[1] num 0 0 0\nMODULE_SPLIT_M0[2] num 0 0 1\nMODULE_SPLIT_M0[3] num 0 0 0\n";

#[tokio::test]
async fn an_indexed_parameter_is_queried_by_name_set_and_verified() {
    let fake = Fake::with_params("", ARRAY);
    // The whole table shows the array as one row, never NAME[i].
    let all = fake.tool().query(DEVICE).await.unwrap();
    let row = all.iter().find(|p| p.name == "MODULE_SPLIT_M0").unwrap();
    assert_eq!(row.next_boot, "Array[0..3]");
    assert!(!all.iter().any(|p| p.name.contains('[')), "{all:?}");

    let desired = params(&[
        ("MODULE_SPLIT_M0[1]", "5"),
        ("MODULE_SPLIT_M0[2]", "1"),
        ("PF_TOTAL_SF", "0"),
    ]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::RebootRequired, "{r}");
    assert_eq!(
        outcome(&r, "MODULE_SPLIT_M0[1]"),
        &ParamOutcome::Set {
            from: "0".into(),
            to: "5".into()
        }
    );
    assert_eq!(outcome(&r, "MODULE_SPLIT_M0[2]"), &ParamOutcome::Unchanged);
    assert_eq!(outcome(&r, "PF_TOTAL_SF"), &ParamOutcome::Unchanged);
    assert!(
        fake.state().contains("MODULE_SPLIT_M0[1] num 0 0 5"),
        "{}",
        fake.state()
    );
    let calls = fake.calls();
    assert_eq!(
        calls[1..],
        [
            format!("-d {DEVICE} -e query MODULE_SPLIT_M0[1] MODULE_SPLIT_M0[2] PF_TOTAL_SF"),
            format!("-d {DEVICE} -y set MODULE_SPLIT_M0[1]=5"),
            format!("-d {DEVICE} -e query MODULE_SPLIT_M0[1]"),
        ]
    );
}

#[tokio::test]
async fn an_unknown_name_in_the_named_query_fails_alone_and_the_rest_is_applied() {
    let fake = Fake::with_params("", ARRAY);
    let desired = params(&[
        ("PF_TOTAL_SF", "20"),
        ("NO_SUCH[3]", "1"),
        ("MODULE_SPLIT_M0[3]", "2"),
    ]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    assert_eq!(
        outcome(&r, "NO_SUCH[3]"),
        &ParamOutcome::Failed("Unknown Parameter NO_SUCH".into())
    );
    assert!(
        matches!(outcome(&r, "PF_TOTAL_SF"), ParamOutcome::Set { to, .. } if to == "20"),
        "{r}"
    );
    assert!(
        matches!(outcome(&r, "MODULE_SPLIT_M0[3]"), ParamOutcome::Set { to, .. } if to == "2"),
        "{r}"
    );
    // The refused name is never sent to set; the others were queried again
    // without it.
    assert!(
        !fake.sets().iter().any(|c| c.contains("NO_SUCH")),
        "{:?}",
        fake.calls()
    );
    assert!(
        fake.calls()
            .contains(&format!("-d {DEVICE} -e query PF_TOTAL_SF MODULE_SPLIT_M0[3]")),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn an_unreadable_parameter_fails_alone_with_the_tools_words() {
    let fake = Fake::new("FAKE_MSTCONFIG_UNREADABLE=PF_BAR2_ENABLE");
    let desired = params(&[("PF_BAR2_ENABLE", "1"), ("PER_PF_NUM_SF", "1")]);
    let r = apply(&fake.tool(), DEVICE, &desired).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    assert_eq!(r.error, None, "{r}");
    match outcome(&r, "PF_BAR2_ENABLE") {
        ParamOutcome::Failed(why) => {
            assert!(why.contains("Failed to query some of the TLVs"), "{why}");
            assert!(why.contains("PF_BAR2_ENABLE"), "{why}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        matches!(outcome(&r, "PER_PF_NUM_SF"), ParamOutcome::Set { .. }),
        "{r}"
    );
    assert!(
        !fake.sets().iter().any(|c| c.contains("PF_BAR2_ENABLE")),
        "{:?}",
        fake.calls()
    );
    assert!(fake.state().contains("PER_PF_NUM_SF bool 0 0 1"));
}

#[tokio::test]
async fn a_whole_query_with_an_unreadable_tlv_keeps_its_rows_and_the_tools_words() {
    use hostplane_agent::nicfw::NicConfigTool as _;
    let fake = Fake::new("FAKE_MSTCONFIG_UNREADABLE=PF_TOTAL_SF");
    let q = fake.tool().query_named(DEVICE, &[]).await.unwrap();
    let names: Vec<&str> = q.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["PF_BAR2_ENABLE", "PER_PF_NUM_SF"]);
    assert_eq!(q.notes.len(), 1, "{q:?}");
    assert!(q.notes[0].contains("Failed to query some of the TLVs"), "{q:?}");
    assert!(q.notes[0].contains("PF_TOTAL_SF"), "{q:?}");
}

/// NV config in memory: each parameter's current and next-boot value, as numbers
/// (`None` current: the tool does not show the column). A set changes only the
/// next-boot value, as the firmware does until it reloads.
struct InMemory(std::sync::Mutex<Vec<hostplane_agent::nicfw::NvParam>>);

impl NicConfigTool for InMemory {
    async fn query(
        &self,
        _device: &str,
    ) -> Result<Vec<hostplane_agent::nicfw::NvParam>, hostplane_agent::nicfw::NicFwError> {
        Ok(self.0.lock().unwrap().clone())
    }

    async fn set(
        &self,
        _device: &str,
        params: &[(String, String)],
    ) -> Result<(), hostplane_agent::nicfw::NicFwError> {
        let mut all = self.0.lock().unwrap();
        for (name, value) in params {
            if let Some(p) = all.iter_mut().find(|p| p.name == *name) {
                p.next_boot = value.clone();
            }
        }
        Ok(())
    }
}

mod power_cycle_pending {
    use hostplane_agent::nicfw::{ApplyOptions, NvParam, apply_with};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// With host_power_cycle_required, the parameters still waiting for a power cycle are
        /// exactly those whose running value is not the one asked for (an unknown running value
        /// counts when the parameter was set now); the report needs a power cycle exactly when
        /// there is one, and never without host_power_cycle_required.
        #[test]
        fn pending_is_every_parameter_whose_running_value_differs(
            rows in prop::collection::vec((prop::option::of(0u8..3), 0u8..3, 0u8..3), 1..6),
            power_cycle in any::<bool>(),
        ) {
            let state: Vec<NvParam> = rows
                .iter()
                .enumerate()
                .map(|(i, (cur, next, _))| NvParam {
                    name: format!("P{i}"),
                    current: cur.map(|c| c.to_string()),
                    next_boot: next.to_string(),
                })
                .collect();
            let desired: Vec<(String, String)> = rows
                .iter()
                .enumerate()
                .map(|(i, (_, _, want))| (format!("P{i}"), want.to_string()))
                .collect();
            let tool = InMemory(std::sync::Mutex::new(state));
            let opts = ApplyOptions { power_cycle_required: power_cycle, ..ApplyOptions::default() };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let report = rt.block_on(apply_with(&tool, DEVICE, &desired, opts));
            prop_assert!(report.succeeded(), "{report}");
            let want: Vec<String> = rows
                .iter()
                .enumerate()
                .filter(|(_, (cur, next, want))| match cur {
                    Some(c) => c != want,
                    None => next != want,
                })
                .map(|(i, _)| format!("P{i}"))
                .collect();
            prop_assert_eq!(&report.pending, &want);
            prop_assert_eq!(report.needs_power_cycle(), power_cycle && !want.is_empty());
            let text = report.to_string();
            if report.needs_power_cycle() {
                prop_assert!(text.contains("only after a host power cycle"), "{}", text);
            } else {
                prop_assert!(!text.contains("only after a host power cycle"), "{}", text);
            }
        }
    }
}
