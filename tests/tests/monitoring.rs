//! The monitoring files shipped in `packaging/monitoring/`, checked with
//! Prometheus's own tool:
//! - the alerting rules pass `promtool check rules` (lint included) and
//!   their unit tests (`promtool test rules`), and every alert has one;
//! - the Grafana dashboard is a dashboard (schema version, unique ids,
//!   panels on the grid without overlaps, data source and variables) and its
//!   PromQL parses with Prometheus's parser (promtool).
//!
//! Which metric names they use is checked against a live scrape in
//! promtool.rs. Without promtool a test prints `SKIPPED: <why>` and returns.
use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, ensure};

#[macro_use]
mod prom;
use prom::{dashboard_exprs, monitoring};

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    require_tools!();
    let rules = monitoring("prometheus/hostplane-rules.yml");
    let doc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&rules)?)?;
    let mut alerts = Vec::new();
    for g in doc["groups"].as_sequence().context("groups")? {
        for r in g["rules"].as_sequence().context("rules")? {
            alerts.push(r["alert"].as_str().context("an alert name")?.to_string());
        }
    }
    let o = Command::new("promtool")
        .args(["check", "rules", "--lint=all", "--lint-fatal"])
        .arg(&rules)
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    ensure!(
        o.status.success() && out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
    let o = Command::new("promtool")
        .args(["test", "rules"])
        .arg(monitoring("prometheus/hostplane-rules.test.yml"))
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.success() && out.contains("SUCCESS"), "{out}");
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(monitoring("prometheus/hostplane-rules.test.yml"))?;
    for alert in &alerts {
        ensure!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in hostplane-rules.test.yml"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_is_grafana_json_whose_promql_parses() -> Result<()> {
    require_tools!();
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(monitoring(
        "grafana/hostplane-dashboard.json",
    ))?)?;
    ensure!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    ensure!(
        d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "uid"
    );
    ensure!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in d["panels"].as_array().context("panels")? {
        ensure!(
            ids.insert(p["id"].as_u64().context("panel id")?),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        ensure!(
            g["w"].as_u64().is_some_and(|w| (1..=24).contains(&w))
                && g["x"]
                    .as_u64()
                    .is_some_and(|x| x + g["w"].as_u64().unwrap_or(0) <= 24),
            "panel {} is off the 24-column grid: {g}",
            p["title"]
        );
        if p["type"] != "row" {
            ensure!(
                p["datasource"]["uid"] == "${datasource}",
                "panel {} datasource",
                p["title"]
            );
        }
        // No two panels share a cell of the grid.
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap_or(0),
            g["y"].as_u64().context("gridPos.y")?,
            g["w"].as_u64().unwrap_or(0),
            g["h"].as_u64().context("gridPos.h")?,
        );
        for cx in x..x + w {
            for cy in y..y + h {
                ensure!(
                    cells.insert((cx, cy)),
                    "panel {} overlaps another at ({cx}, {cy})",
                    p["title"]
                );
            }
        }
    }
    let variables: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .context("templating")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    ensure!(
        variables.contains("datasource") && variables.contains("instance"),
        "{variables:?}"
    );
    // Each expression, with Grafana's variables as Grafana would fill them,
    // as a recording rule: promtool parses it with Prometheus's own parser.
    let exprs = dashboard_exprs()?;
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m").replace("$instance", ".*");
        ensure!(!e.contains('$'), "an unknown variable in {e}");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&e)?
        ));
    }
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules)?;
    let o = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.success(), "the dashboard's PromQL:\n{out}\n{rules}");
    Ok(())
}
