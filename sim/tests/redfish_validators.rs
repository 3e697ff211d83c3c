//! DMTF's own validators against the real `hostplane-sim bmc`, every model,
//! over HTTPS with the lab certificate, as a BMC is expected to pass them:
//!
//! - `rf_service_validator` (PyPI `redfish-service-validator`): every
//!   resource reachable from the service root against DMTF's CSDL schemas
//!   (offline: `../shared/redfish-csdl/csdl` next to the repository, or
//!   `$HOSTPLANE_REDFISH_CSDL/csdl`);
//! - `rf_protocol_validator` (PyPI `redfish-protocol-validator`): the
//!   protocol assertions of DSP0266 (headers, status codes, sessions,
//!   $metadata, the OData service document, roles, ...).
//!
//! Zero failures from each report. Skips, saying why, when the schemas or
//! the validators are not installed (`scripts/setup` installs both tools).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const MODELS: [&str; 4] = ["dgx-h100", "dgx-b200", "dgx-b300", "gb200"];

fn csdl_dir() -> PathBuf {
    match std::env::var_os("HOSTPLANE_REDFISH_CSDL") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/redfish-csdl"),
    }
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The simulator, killed when dropped.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start one `hostplane-sim bmc` with a BMC per model; (name, model, url) each.
fn start(cert_dir: &Path) -> (Sim, Vec<(String, String, String)>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hostplane-sim"));
    cmd.arg("bmc").arg("--cert-dir").arg(cert_dir);
    for m in MODELS {
        cmd.arg("--bmc").arg(format!("{m}={m}@0"));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hostplane-sim bmc");
    let stdout = child.stdout.take().unwrap();
    let sim = Sim(child);
    let mut bmcs = Vec::new();
    for line in BufReader::new(stdout).lines().take(MODELS.len()) {
        let line = line.unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "NAME MODEL URL: {line}");
        assert!(f[2].starts_with("https://127.0.0.1:"), "HTTPS by default: {line}");
        bmcs.push((f[0].to_string(), f[1].to_string(), f[2].to_string()));
    }
    assert_eq!(bmcs.len(), MODELS.len(), "the simulator stopped early");
    (sim, bmcs)
}

/// The validators' HTTP clients (requests) trust the lab CA, and only it.
fn python(tool: &str, ca: &Path) -> Command {
    let mut c = Command::new(tool);
    c.env("REQUESTS_CA_BUNDLE", ca).env_remove("CURL_CA_BUNDLE");
    c
}

/// The counts of the service validator's summary table: (pass, warn, fail).
fn service_summary(out: &str) -> Option<(u64, u64, u64)> {
    let mut lines = out
        .lines()
        .skip_while(|l| !l.contains("PASS") || !l.contains("FAIL"));
    lines.next()?;
    let row = lines.find(|l| l.starts_with('|'))?;
    let n: Vec<u64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
    (n.len() == 4).then(|| (n[0], n[1], n[2]))
}

fn service_validator(url: &str, csdl: &Path, ca: &Path, logs: &Path) -> Result<String, String> {
    let out = python("rf_service_validator", ca)
        .args(["--rhost", url, "-u", "admin", "-p", "admin", "--skipschema"])
        .arg("--schema_directory")
        .arg(csdl.join("csdl"))
        .arg("--logdir")
        .arg(logs)
        .output()
        .map_err(|e| format!("rf_service_validator: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("FAIL -")).collect();
    match service_summary(&text) {
        Some((pass, _, 0)) if pass > 300 && out.status.success() => Ok(format!("service: {pass} passed")),
        Some((pass, warn, fail)) => Err(format!(
            "service validator on {url}: {pass} passed, {warn} warnings, {fail} failed ({}):\n{}",
            out.status,
            failures.join("\n")
        )),
        None => Err(format!(
            "service validator on {url}: no summary ({}):\n{text}",
            out.status
        )),
    }
}

fn protocol_validator(url: &str, ca: &Path, reports: &Path) -> Result<String, String> {
    let out = python("rf_protocol_validator", ca)
        .args([
            "--rhost",
            url,
            "-u",
            "admin",
            "-p",
            "admin",
            "--avoid-http-redirect",
        ])
        .args(["--report-type", "tsv", "--ca-bundle"])
        .arg(ca)
        .arg("--report-dir")
        .arg(reports)
        .output()
        .map_err(|e| format!("rf_protocol_validator: {e}"))?;
    let report = std::fs::read_dir(reports)
        .map_err(|e| format!("{}: {e}", reports.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tsv"))
        .ok_or_else(|| {
            format!(
                "protocol validator on {url}: no TSV report ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let tsv = std::fs::read_to_string(&report).map_err(|e| e.to_string())?;
    // Assertion, Method, Status code, URI, Result, Message, Requirement
    let rows: Vec<Vec<&str>> = tsv.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    fn result<'a>(r: &[&'a str]) -> &'a str {
        r.get(4).copied().unwrap_or_default()
    }
    let pass = rows.iter().filter(|r| result(r) == "PASS").count();
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| result(r) == "FAIL")
        .map(|r| r[..r.len().min(6)].join(" | "))
        .collect();
    if failed.is_empty() && pass > 200 {
        Ok(format!("protocol: {pass} passed"))
    } else {
        Err(format!(
            "protocol validator on {url}: {pass} passed, {} failed:\n{}",
            failed.len(),
            failed.join("\n")
        ))
    }
}

#[test]
fn dmtf_validators_pass_every_simulated_model() {
    let csdl = csdl_dir();
    if !csdl.join("csdl/ServiceRoot_v1.xml").exists() {
        eprintln!(
            "SKIP: DMTF's CSDL schemas are not at {} (set HOSTPLANE_REDFISH_CSDL)",
            csdl.display()
        );
        return;
    }
    for tool in ["rf_service_validator", "rf_protocol_validator"] {
        if !on_path(tool) {
            eprintln!("SKIP: {tool} is not installed (scripts/setup installs it with pip)");
            return;
        }
    }
    let csdl = csdl.canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (_sim, bmcs) = start(&certs);
    let ca = certs.join("ca.crt");
    // One thread per model: the validators spend most of their time waiting.
    let results: Vec<(String, Result<String, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = bmcs
            .iter()
            .map(|(name, model, url)| {
                let logs = dir.path().join(name);
                let (csdl, ca) = (&csdl, &ca);
                s.spawn(move || {
                    let r = service_validator(url, csdl, ca, &logs.join("service")).and_then(|a| {
                        protocol_validator(url, ca, &logs.join("protocol")).map(|b| format!("{a}, {b}"))
                    });
                    (model.clone(), r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failed = Vec::new();
    for (model, r) in results {
        match r {
            Ok(summary) => eprintln!("{model}: {summary}"),
            Err(e) => failed.push(format!("{model}: {e}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn the_service_summary_is_read() {
    let out = "x\n+----+\n|     PASS     |     WARN     |     FAIL     |  NOT TESTED  |\n\
               +--------------+\n|     876      |      2       |      3       |     1829     |\n";
    assert_eq!(service_summary(out), Some((876, 2, 3)));
    assert_eq!(service_summary("no table"), None);
}
