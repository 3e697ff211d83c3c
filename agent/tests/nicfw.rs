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
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nvconfig");
        std::fs::write(
            &state,
            format!("{DEVICE}\nPF_BAR2_ENABLE bool 0 0 0\nPER_PF_NUM_SF bool 0 0 0\nPF_TOTAL_SF num 0 0 0\n"),
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
