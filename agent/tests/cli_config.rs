//! `--config` is global: before or after the subcommand, the same file and
//! the same outcome; subcommands that read no agent config refuse it.
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_before_or_after_the_subcommand_is_the_same() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("state");
    let good = d.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "node_name: n1\ncoordinator: http://127.0.0.1:1\ninsecure: true\nstate_dir: {}\n",
            state.display()
        ),
    )
    .unwrap();
    let bad = d.path().join("bad.yaml");
    std::fs::write(&bad, "node_name: n1\nno_such_key: 1\n").unwrap();
    let missing = d.path().join("missing.yaml");
    for (file, code) in [(&good, 0), (&bad, 78), (&missing, 78)] {
        let f = file.to_str().unwrap();
        let after = agent(&["validate", "--config", f]);
        let before = agent(&["--config", f, "validate"]);
        assert_eq!(after.status.code(), Some(code), "{f}: {}", said(&after));
        assert_eq!(before.status.code(), Some(code), "{f}: {}", said(&before));
        assert_eq!(said(&after), said(&before), "{f}");
    }
    assert!(said(&agent(&["--config", good.to_str().unwrap(), "validate"])).contains("node n1"));
    assert!(said(&agent(&["--config", bad.to_str().unwrap(), "validate"])).contains("no_such_key"));

    // power read takes its BMC from the same global --config, in either place.
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec!["--config", good.to_str().unwrap(), "power", "read"],
        vec!["power", "read", "--config", good.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
            .args(&args)
            .args(["--interval", "10ms", "-o", "json", "--sysfs-root"])
            .arg(empty.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", said(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc["unavailable"].is_array(), "{doc}");
    }
    let out = agent(&["--config", bad.to_str().unwrap(), "power", "read"]);
    assert_eq!(out.status.code(), Some(78), "{}", said(&out));
}

#[test]
fn subcommands_without_a_config_refuse_it() {
    let out = agent(&["--config", "/nonexistent.yaml", "version"]);
    assert_eq!(out.status.code(), Some(64), "{}", said(&out));
    assert!(
        said(&out).contains("--config does not apply to version"),
        "{}",
        said(&out)
    );
    assert_eq!(agent(&["version"]).status.code(), Some(0));
    let out = agent(&["--config", "/nonexistent.yaml", "network", "show"]);
    assert_eq!(out.status.code(), Some(64), "{}", said(&out));
}
