//! `nicfw::apply` through `Mstconfig` against the real `mstconfig` from
//! Debian's mstflint package (scripts/setup installs it). This machine has no
//! ConnectX/BlueField device, so what the real tool can show here is its
//! refusal: the agent must report the tool's own words, claim nothing set,
//! and never call `set` after a failed query. The fake mstconfig
//! (tests/nicfw.rs) covers the success paths; this test keeps the fake's
//! error handling honest against the tool it stands for.

use hostplane_agent::nicfw::{Mstconfig, NicConfigTool, NicFwError, Overall, ParamOutcome, apply};

/// The real mstconfig on PATH, or None with the reason printed.
fn real_mstconfig() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join("mstconfig"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: no mstconfig on PATH (scripts/setup installs Debian's mstflint)");
    }
    found
}

/// A PCI address no device on this machine has.
fn absent_device() -> String {
    let candidates = ["0000:fe:1f.7", "0000:fd:1e.6", "0000:fc:1d.5"];
    candidates
        .iter()
        .find(|a| !std::path::Path::new("/sys/bus/pci/devices").join(a).exists())
        .expect("one of three unlikely PCI addresses is free")
        .to_string()
}

#[tokio::test]
async fn a_device_the_real_tool_cannot_open_fails_with_its_words_and_nothing_set() {
    let Some(program) = real_mstconfig() else {
        return;
    };
    let device = absent_device();
    let tool = Mstconfig::new(&program);

    // The query itself: the tool's exit status and its -E- text.
    match tool.query(&device).await {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("Failed to open the device"), "{text}");
            assert!(
                matches!(e, NicFwError::Tool { .. }),
                "not the tool's refusal: {e:?}"
            );
            assert!(text.contains(&device), "the error names the device: {text}");
        }
        Ok(params) => panic!("mstconfig read {} parameters from absent {device}", params.len()),
    }

    // The whole apply: failed overall, every parameter failed, the tool's
    // words in the report, nothing claimed as set or unchanged.
    let desired = vec![
        ("SRIOV_EN".to_string(), "1".to_string()),
        ("NUM_OF_VFS".to_string(), "8".to_string()),
    ];
    let r = apply(&tool, &device, &desired).await;
    assert_eq!(r.overall(), Overall::Failed, "{r}");
    assert!(!r.succeeded());
    assert!(!r.any_set());
    let err = r.error.as_deref().expect("the query's error is reported");
    assert!(err.contains("Failed to open the device"), "{err}");
    assert_eq!(r.params.len(), 2, "{r}");
    for p in &r.params {
        assert!(matches!(p.outcome, ParamOutcome::Failed(_)), "{p:?}");
    }
}
