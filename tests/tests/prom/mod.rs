//! Helpers shared by promtool.rs and monitoring.rs: where the monitoring
//! files are, whether promtool and the Python parser are installed, the
//! PromQL of the rules and the dashboard, the metric names in PromQL, and
//! the metrics docs/operations.md lists.
#![allow(dead_code)] // each test file uses its part

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn monitoring(path: &str) -> PathBuf {
    root().join("packaging/monitoring").join(path)
}

/// Why promtool or the Python parser cannot run here, if they cannot.
pub fn tools_missing() -> Option<String> {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Some(
                "promtool is not installed; scripts/setup installs Debian's prometheus package".into(),
            );
        }
    }
    match Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => {
            Some("the Python module prometheus_client is missing; scripts/setup installs it with pip".into())
        }
    }
}

macro_rules! require_tools {
    () => {
        if let Some(why) = $crate::prom::tools_missing() {
            eprintln!("SKIPPED: {why}");
            return Ok(());
        }
    };
}

/// The metrics docs/operations.md lists (its "### Metrics" table): name and type.
pub fn documented_metrics() -> Result<BTreeMap<String, String>> {
    let ops = std::fs::read_to_string(root().join("docs/operations.md"))?;
    let start = ops
        .find("\n### Metrics\n")
        .context("docs/operations.md has no ### Metrics section")?;
    let section = &ops[start + 1..];
    let section = &section[..section[4..].find("\n#").map_or(section.len(), |e| e + 4)];
    let names: BTreeMap<String, String> = section
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split('|');
            let name = cells.next()?.split('`').next()?;
            let kind = cells.next()?.trim();
            Some((name.to_string(), kind.to_string()))
        })
        .collect();
    ensure!(names.len() > 10, "too few metrics found in the table: {names:?}");
    Ok(names)
}

/// Every `expr` of every rule.
pub fn rule_exprs() -> Result<Vec<String>> {
    let rules: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(monitoring(
        "prometheus/hostplane-rules.yml",
    ))?)?;
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().context("groups")? {
        for r in g["rules"].as_sequence().context("rules")? {
            out.push(r["expr"].as_str().context("expr")?.to_string());
        }
    }
    Ok(out)
}

/// Every PromQL expression of every panel of the dashboard.
pub fn dashboard_exprs() -> Result<Vec<String>> {
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(monitoring(
        "grafana/hostplane-dashboard.json",
    ))?)?;
    let mut out = Vec::new();
    for p in d["panels"].as_array().context("panels")? {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().context("targets")?;
        ensure!(!targets.is_empty(), "panel {} has no targets", p["title"]);
        for t in targets {
            out.push(t["expr"].as_str().context("a target's expr")?.to_string());
        }
    }
    Ok(out)
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, aggregations, keywords, label names or durations.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    ];
    // Blank out strings, label matchers and ranges.
    let mut plain = String::with_capacity(expr.len());
    let (mut depth_brace, mut depth_bracket, mut quote) = (0, 0, None::<char>);
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            plain.push(' ');
            continue;
        }
        match c {
            '"' | '\'' | '`' => {
                quote = Some(c);
                plain.push(' ');
            }
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => plain.push(' '),
            _ => plain.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            plain.push(' ');
        }
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    // Label lists after by/without/on/ignoring/group_*: skip "( ... )".
    let mut skip_parens = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let preceded_by_digit = start > 0 && chars[start - 1].is_ascii_digit();
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                skip_parens = true;
            } else if next != Some(&'(')
                && !WORDS.contains(&word.to_lowercase().as_str())
                && !preceded_by_digit
            {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_parens {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_parens = false;
        } else if !c.is_whitespace() {
            skip_parens = false;
        }
        i += 1;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_found_in_promql() {
        let cases: &[(&str, &[&str])] = &[
            ("up{job=\"hostplane-agent\"} == 0", &["up"]),
            (
                "sum by (instance, dpu) (increase(hostplane_network_drift_repairs_total[30m])) > 3",
                &["hostplane_network_drift_repairs_total"],
            ),
            (
                "count(hostplane_power_source_up{job=\"a\",instance=~\"$instance\"} == 0) or vector(0)",
                &["hostplane_power_source_up"],
            ),
            (
                "sum(rate(a_total[5m])) / on(instance) group_left(node) b_info * 1e3",
                &["a_total", "b_info"],
            ),
            (
                "histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))",
                &["x_bucket"],
            ),
            ("{__name__=\"odd\"}", &[]),
        ];
        for (expr, want) in cases {
            let got = metric_names(expr);
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(got, want, "{expr}");
        }
    }
}
