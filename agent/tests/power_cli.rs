//! `hostplane-agent power read` against a fake sysfs tree.
use std::process::Command;

fn write(root: &std::path::Path, rel: &str, v: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, v).unwrap();
}

#[test]
fn power_read_prints_every_source_and_says_why_one_is_missing() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "class/powercap/intel-rapl:0/name", "package-0\n");
    write(
        t.path(),
        "class/powercap/intel-rapl:0/max_energy_range_uj",
        "262143328850\n",
    );
    write(t.path(), "class/powercap/intel-rapl:0/energy_uj", "1000\n");
    write(t.path(), "class/hwmon/hwmon0/name", "acpi_power_meter\n");
    write(t.path(), "class/hwmon/hwmon0/power1_average", "450000000\n");
    let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .args([
            "power",
            "read",
            "--interval",
            "50ms",
            "-o",
            "json",
            "--sysfs-root",
        ])
        .arg(t.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One JSON document: the readings, and the sources that gave none.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = doc["readings"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let missing: Vec<&str> = doc["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["source"].as_str().unwrap())
        .collect();
    assert!(
        missing.contains(&"redfish") && !missing.contains(&"rapl") && !missing.contains(&"hwmon"),
        "{doc}"
    );
    let rapl = lines.iter().find(|l| l["source"] == "rapl").unwrap();
    assert_eq!(
        (rapl["scope"].as_str(), rapl["device"].as_str()),
        (Some("package"), Some("intel-rapl:0"))
    );
    assert_eq!(rapl["method"], "integrated");
    assert_eq!(
        rapl["watts"], 0.0,
        "an unchanged counter over the window is 0 W, measured, not a guess"
    );
    let hw = lines.iter().find(|l| l["source"] == "hwmon").unwrap();
    assert_eq!(hw["watts"], 450.0);

    // No sources at all, as JSON: still one document, every reason in it
    // (and not on stderr).
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .args([
            "power",
            "read",
            "--interval",
            "10ms",
            "-o",
            "json",
            "--sysfs-root",
        ])
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["readings"], serde_json::json!([]), "{doc}");
    let reasons: Vec<(&str, &str)> = doc["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["source"].as_str().unwrap(), u["reason"].as_str().unwrap()))
        .collect();
    for source in ["rapl", "hwmon", "redfish"] {
        let n = reasons.iter().filter(|(s, _)| *s == source).count();
        assert_eq!(n, 1, "{source} once in {doc}");
    }
    assert!(reasons.iter().all(|(_, r)| !r.is_empty()), "{doc}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("unavailable"),
        "the reasons are in the document: {err}"
    );

    // No sources at all, as a table: exit 0, and say why for each, once.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .args(["power", "read", "--interval", "10ms", "--sysfs-root"])
        .arg(empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(
        err.contains("rapl: unavailable") && err.contains("hwmon: unavailable"),
        "{err}"
    );
    for source in ["rapl", "hwmon", "redfish"] {
        let n = err.matches(&format!("{source}: unavailable")).count();
        assert_eq!(n, 1, "{source} once: {err}");
    }
}
