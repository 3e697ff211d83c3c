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

/// The simulated BMC over HTTPS with its lab CA: read twice, so the node's
/// energy is measured over the interval (not a first read's 0); without the
/// CA the BMC is unavailable, saying why.
#[test]
fn power_read_reads_the_simulated_bmc_over_https() {
    use hostplane_sim::bmc::{BmcOptions, BmcSim, LabCerts, Model, Workload};
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = tempfile::tempdir().unwrap();
    let tls = LabCerts::generate(&[])
        .unwrap()
        .write(&d.path().join("tls"))
        .unwrap();
    let ca = d.path().join("tls/ca.crt");
    let bmc = rt
        .block_on(async {
            BmcSim::spawn(BmcOptions {
                tls: Some(tls),
                workload: Workload::Constant(1.0),
                ..BmcOptions::new("cli", Model::DgxH100)
            })
        })
        .unwrap();
    assert!(bmc.url().starts_with("https://"));
    let pw = d.path().join("pw");
    std::fs::write(&pw, "admin\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let read = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
            .args([
                "power",
                "read",
                "--interval",
                "200ms",
                "-o",
                "json",
                "--bmc-username",
                "admin",
            ])
            .args(["--bmc-url", &bmc.url(), "--bmc-password-file"])
            .arg(&pw)
            .arg("--sysfs-root")
            .arg(empty.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let doc = read(&["--bmc-ca-file", ca.to_str().unwrap()]);
    let node = doc["readings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == "redfish" && r["scope"] == "node")
        .unwrap_or_else(|| panic!("{doc}"));
    let max = Model::DgxH100.spec().node_max_watts();
    assert!((node["watts"].as_f64().unwrap() - max).abs() < 1.0, "{node}");
    // At least the 200 ms interval at full load, read from the BMC's EnergykWh.
    let joules = node["energy_joules"].as_f64().unwrap_or_else(|| panic!("{node}"));
    assert!(joules >= 0.2 * max * 0.9, "{node}");
    let doc = read(&[]);
    let why = doc["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["source"] == "redfish")
        .unwrap_or_else(|| panic!("{doc}"));
    assert!(why["reason"].as_str().unwrap().contains("certificate"), "{why}");
}
