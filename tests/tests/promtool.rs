//! What Prometheus's own tools make of hostplane's metrics:
//! - a live scrape of the real agent (fake sysfs power tree, a BMC, host
//!   networking), of the real coordinator and of the real `hostplane-sim
//!   bmc`, with a Prometheus 2.x `Accept` header and with none: the text
//!   format 0.0.4 body passes `promtool check metrics` with no problem at
//!   all, the OpenMetrics body passes the strict OpenMetrics parser of the
//!   Python `prometheus_client` (promtool 2.42 reads only the text format),
//!   and both bodies hold the same families with the same types; every
//!   metric name the dashboard and the alerting rules use is one the daemons
//!   serve or docs/operations.md lists, and everything served is listed;
//!   a real Prometheus scrapes all three, records every family's type and
//!   help, evaluates the alerting rules and runs every dashboard query;
//! - generated registries, converted by `hostplane_common::exposition`, pass
//!   the same two checks and keep every sample.
//!
//! `promtool` comes from Debian's `prometheus` package and the Python parser
//! from PyPI (`scripts/setup` installs both); without them a test prints
//! `SKIPPED: <why>` and returns.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hostplane_common::exposition;
use hostplane_proto::v1::RebootMethod;
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{Proc, bin, free_addr, fuse_unavailable, power, wait_for};
use proptest::prelude::*;

#[macro_use]
mod prom;
use prom::{dashboard_exprs, documented_metrics, metric_names, rule_exprs, tools_missing};

/// What Prometheus 2.x (2.42, Debian's, included) sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Parses an exposition body with the Python client library's parsers
/// (argv[1]: `openmetrics` — the strict OpenMetrics 1.0 parser, which
/// refuses a body without `# EOF` or with a sample outside its family — or
/// `text`, the 0.0.4 parser) and prints its families as JSON: name, type
/// and samples (`_created` left out: text 0.0.4 has none).
const PARSE_PY: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as text
body = sys.stdin.read()
parse = om if sys.argv[1] == "openmetrics" else text
out = []
for f in parse(body):
    out.append({"name": f.name, "type": f.type, "samples": [
        [s.name, sorted(s.labels.items()), repr(float(s.value))]
        for s in f.samples if not s.name.endswith("_created")]})
print(json.dumps(out))
"#;

/// Run `program args` with `stdin`; its exit status and stdout + stderr.
fn run(program: &str, args: &[&str], stdin: &str) -> Result<(bool, String)> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    let body = stdin.to_string();
    let writer = std::thread::spawn(move || input.write_all(body.as_bytes()));
    let out = child.wait_with_output()?;
    writer.join().expect("stdin writer")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// `promtool check metrics` on a text format body: exit 0 and not a word.
fn promtool_check_metrics(what: &str, body: &str) -> Result<()> {
    let (ok, out) = run("promtool", &["check", "metrics"], body)?;
    ensure!(
        ok && out.trim().is_empty(),
        "promtool check metrics on {what}:\n{out}\n--- body ---\n{body}"
    );
    Ok(())
}

/// A sample as the Python parsers see it: name, labels, value.
type PySample = (String, Vec<(String, String)>, String);

/// A family as the Python parsers see it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct PyFamily {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    samples: Vec<PySample>,
}

fn parse_py(format: &str, what: &str, body: &str) -> Result<Vec<PyFamily>> {
    let (ok, out) = run("python3", &["-c", PARSE_PY, format], body)?;
    ensure!(
        ok,
        "the Python {format} parser refused {what}:\n{out}\n--- body ---\n{body}"
    );
    serde_json::from_str(out.trim()).with_context(|| format!("parser output: {out}"))
}

/// Both bodies are what their format wants, and say the same.
fn check_pair(
    what: &str,
    text: &str,
    openmetrics: &str,
    same_values: bool,
) -> Result<BTreeMap<String, String>> {
    promtool_check_metrics(&format!("{what} (text 0.0.4)"), text)?;
    let om = parse_py("openmetrics", &format!("{what} (OpenMetrics)"), openmetrics)?;
    let txt = parse_py("text", &format!("{what} (text 0.0.4)"), text)?;
    let types = |fs: &[PyFamily]| -> BTreeMap<String, String> {
        fs.iter().map(|f| (f.name.clone(), f.kind.clone())).collect()
    };
    ensure!(
        types(&om) == types(&txt),
        "{what}: the two formats disagree on the families:\nOpenMetrics {:?}\ntext {:?}",
        types(&om),
        types(&txt)
    );
    if same_values {
        ensure!(om == txt, "{what}: the samples differ:\n{om:?}\n{txt:?}");
    }
    Ok(types(&om))
}

/// GET `url` with `accept`; content type and body.
async fn scrape(client: &reqwest::Client, url: &str, accept: Option<&str>) -> Result<(String, String)> {
    let mut req = client.get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.with_context(|| format!("GET {url}"))?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .context("no content-type")?
        .to_str()?
        .to_string();
    Ok((ct, r.text().await?))
}

/// Scrape `url` both ways and check the pair (again if a family appeared
/// between the two scrapes); the metric names served.
async fn check_endpoint(client: &reqwest::Client, what: &str, url: &str) -> Result<BTreeSet<String>> {
    let mut last = None;
    for _ in 0..5 {
        let (ct_text, text) = scrape(client, url, None).await?;
        let (ct_om, om) = scrape(client, url, Some(PROMETHEUS_ACCEPT)).await?;
        assert_eq!(ct_text, exposition::TEXT_CONTENT_TYPE, "{what} without Accept");
        assert_eq!(
            ct_om,
            exposition::OPENMETRICS_CONTENT_TYPE,
            "{what} with Prometheus's Accept"
        );
        match check_pair(what, &text, &om, false) {
            Ok(_) => return Ok(sample_names(&text)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.expect("tried"))
}

/// The metric names of a text format body's samples, folded to their
/// family for histograms (`_bucket`, `_sum`, `_count`).
fn sample_names(text: &str) -> BTreeSet<String> {
    let mut histograms = BTreeSet::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ")
            && let Some((name, "histogram")) = t.split_once(' ')
        {
            histograms.insert(name.to_string());
        }
    }
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let name = &l[..l.find(['{', ' ']).unwrap_or(l.len())];
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| histograms.contains(*f)))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

/// The BMC simulator binary on a free port; its base URL (http or https).
async fn start_bmc(dir: &Path) -> Result<(Proc, String)> {
    let addr = free_addr()?;
    let out = dir.join("bmc.out");
    let p = Proc::spawn(
        "bmc",
        &bin("hostplane-sim")?,
        &["bmc", "--bmc", &format!("bmc-n1=dgx-h100@{addr}")],
        &out,
    )?;
    let url = wait_for("the BMC simulator's URL", Duration::from_secs(20), || {
        let out = out.clone();
        async move {
            let s = std::fs::read_to_string(&out).ok()?;
            s.lines()
                .find_map(|l| l.strip_prefix("bmc-n1 dgx-h100 "))
                .map(|u| u.trim().to_string())
        }
    })
    .await?;
    Ok((p, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_agent_coordinator_and_bmc_metrics_pass_promtool_and_an_openmetrics_parser() -> Result<()> {
    require_tools!();
    if let Some(why) = fuse_unavailable() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    let coordinator_metrics = free_addr()?;
    let mut world = World::start(WorldOpts {
        dpus: 1,
        coordinator_yaml: format!("metrics:\n  listen: {coordinator_metrics}\n"),
        ..Default::default()
    })
    .await?;
    world.add_node("n1", RebootMethod::External, &[], &[]).await?;
    let (_bmc, bmc_url) = start_bmc(&world.dir).await?;
    let sysfs = world.dir.join("sysfs");
    power::fake_sysfs(&sysfs)?;
    let pw = world.dir.join("bmc-password");
    std::fs::write(&pw, "admin\n")?;
    let metrics = free_addr()?;
    world.start_agent_with(
        "n1",
        &format!(
            "metrics:\n  listen: {metrics}\n\
             power:\n  sysfs_root: {sysfs}\n  bmc:\n    url: {bmc_url}\n    username: admin\n    password_file: {pw}\n    insecure_tls: true\n",
            sysfs = sysfs.display(),
            pw = pw.display(),
        ),
    )?;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true) // the simulator's lab certificate
        .timeout(Duration::from_secs(10))
        .build()?;
    let agent_url = format!("http://{metrics}/metrics");
    // Wait until the agent has read its sources and the BMC at least once.
    wait_for("the agent's power metrics", Duration::from_secs(60), || {
        let (client, url) = (client.clone(), agent_url.clone());
        async move {
            let (_, body) = scrape(&client, &url, None).await.ok()?;
            (body.contains("source=\"redfish\"")
                && body.contains("hostplane_power_watts{")
                && body.contains("hostplane_energy_joules_total{"))
            .then_some(())
        }
    })
    .await?;
    let mut served = check_endpoint(&client, "the agent's /metrics", &agent_url).await?;
    for name in [
        "hostplane_energy_joules_total",
        "hostplane_power_watts",
        "hostplane_power_source_up",
        "hostplane_bmc_requests_total",
        "hostplane_network_changes_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(served.contains(name), "the agent serves no {name}: {served:?}");
    }
    let bmc_names = check_endpoint(
        &client,
        "the BMC simulator's /metrics",
        &format!("{bmc_url}/metrics"),
    )
    .await?;
    assert!(
        bmc_names.contains("hostplane_sim_bmc_requests_total"),
        "{bmc_names:?}"
    );
    served.extend(bmc_names);
    let coordinator_url = format!("http://{coordinator_metrics}/metrics");
    // The node is reachable once its agent holds a lease.
    wait_for(
        "node n1 reachable in the coordinator's metrics",
        Duration::from_secs(30),
        || {
            let (client, url) = (client.clone(), coordinator_url.clone());
            async move {
                let (_, body) = scrape(&client, &url, None).await.ok()?;
                body.contains("hostplane_coordinator_node_reachable{node=\"n1\"} 1\n")
                    .then_some(())
            }
        },
    )
    .await?;
    let coordinator_names = check_endpoint(&client, "the coordinator's /metrics", &coordinator_url).await?;
    for name in [
        "hostplane_coordinator_dpus",
        "hostplane_coordinator_node_reachable",
        "process_cpu_seconds_total",
    ] {
        assert!(
            coordinator_names.contains(name),
            "the coordinator serves no {name}: {coordinator_names:?}"
        );
    }
    served.extend(coordinator_names);
    // Everything served is documented; what the dashboard and the rules use
    // is served or documented.
    let documented = documented_metrics()?;
    let undocumented: Vec<_> = served.iter().filter(|n| !documented.contains_key(*n)).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/operations.md ### Metrics: {undocumented:?}"
    );
    let mut known: BTreeSet<String> = documented.keys().cloned().collect();
    known.extend(served);
    known.insert("up".into()); // Prometheus's own, per target
    // A histogram's series: <name>_bucket, _sum, _count.
    for (name, kind) in &documented {
        if kind == "histogram" {
            known.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        }
    }
    for (file, exprs) in [
        ("grafana/hostplane-dashboard.json", dashboard_exprs()?),
        ("prometheus/hostplane-rules.yml", rule_exprs()?),
    ] {
        for expr in exprs {
            for name in metric_names(&expr) {
                assert!(
                    known.contains(&name),
                    "{file}: {name} (in {expr}) is neither served nor documented"
                );
            }
        }
    }
    let bmc_target = bmc_url.split_once("://").context("the BMC's URL")?;
    real_prometheus_scrapes(
        &client,
        &world.dir,
        &metrics.to_string(),
        &coordinator_metrics.to_string(),
        bmc_target,
    )
    .await?;
    world.shutdown().await
}

/// A real Prometheus (Debian's `prometheus`, 2.42, which asks for
/// OpenMetrics and then parses with its strict OpenMetrics parser) scrapes
/// the three endpoints with the alerting rules loaded: every target is up
/// (a body its parser refused would mark it down with the error), it
/// records the type and help of each family, the rules evaluate on the live
/// series without error, and every dashboard query runs. Skipped when
/// `prometheus` is not installed.
async fn real_prometheus_scrapes(
    client: &reqwest::Client,
    dir: &Path,
    agent: &str,
    coordinator: &str,
    (bmc_scheme, bmc): (&str, &str),
) -> Result<()> {
    let Ok(prometheus) = which("prometheus") else {
        eprintln!("SKIPPED (the real Prometheus part): prometheus is not installed");
        return Ok(());
    };
    let rules = prom::monitoring("prometheus/hostplane-rules.yml");
    let web = free_addr()?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n\
             \x20 - job_name: hostplane-agent\n    static_configs: [{{targets: [\"{agent}\"]}}]\n\
             \x20 - job_name: hostplane-coordinator\n    static_configs: [{{targets: [\"{coordinator}\"]}}]\n\
             \x20 - job_name: hostplane-sim-bmc\n    scheme: {bmc_scheme}\n    tls_config: {{insecure_skip_verify: true}}\n\
             \x20   static_configs: [{{targets: [\"{bmc}\"]}}]\n",
            rules = rules.display().to_string(),
        ),
    )?;
    let _prometheus = Proc::spawn(
        "prometheus",
        &prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
            &format!("--web.listen-address={web}"),
        ],
        &dir.join("prometheus.log"),
    )?;
    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let get = |url: String| async move {
        let v: serde_json::Value =
            serde_json::from_str(&client.get(&url).send().await.ok()?.text().await.ok()?).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    };
    // Every target scraped successfully at least once.
    let targets = wait_for(
        "Prometheus to scrape all three targets",
        Duration::from_secs(60),
        || {
            let url = api("targets");
            async move {
                let data = get(url).await?;
                let active = data["activeTargets"].as_array()?.clone();
                (active.len() == 3 && active.iter().all(|t| t["health"] == "up")).then_some(active)
            }
        },
    )
    .await;
    if let Err(e) = targets {
        let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        let now = get(api("targets")).await;
        bail!("{e}: targets {now:?}\n--- prometheus.log ---\n{log}");
    }
    // The type and help of every family, as Prometheus recorded them.
    let metadata = wait_for("Prometheus's metadata", Duration::from_secs(20), || {
        let url = api("metadata");
        async move {
            let data = get(url).await?;
            data.get("hostplane_energy_joules")
                .and(data.get("hostplane_coordinator_dpus"))
                .and(data.get("hostplane_sim_bmc_requests"))
                .is_some()
                .then_some(data)
        }
    })
    .await?;
    for (family, kind) in [
        ("hostplane_energy_joules", "counter"),
        ("hostplane_power_watts", "gauge"),
        ("hostplane_power_source_up", "gauge"),
        ("hostplane_power_sample_duration_seconds", "histogram"),
        ("hostplane_power_telemetry_dropped_samples", "counter"),
        ("hostplane_bmc_requests", "counter"),
        ("hostplane_network_changes", "counter"),
        ("process_cpu_seconds", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("hostplane_coordinator_dpus", "gauge"),
        ("hostplane_coordinator_node_reachable", "gauge"),
        ("hostplane_sim_bmc_requests", "counter"),
        ("hostplane_sim_bmc_power_watts", "gauge"),
    ] {
        let m = &metadata[family][0];
        assert_eq!(m["type"], kind, "{family}: {m}");
        assert!(
            m["help"].as_str().is_some_and(|h| !h.is_empty()),
            "{family} has no help: {m}"
        );
    }
    // The rules evaluate on live data without error.
    wait_for("every rule evaluated", Duration::from_secs(20), || {
        let url = api("rules");
        async move {
            let data = get(url).await?;
            let rules: Vec<serde_json::Value> = data["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (!rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        }
    })
    .await?;
    // Every dashboard query runs, as Grafana would send it.
    for expr in dashboard_exprs()? {
        let q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
        let body = client
            .get(api("query"))
            .query(&[("query", q.as_str())])
            .send()
            .await?
            .text()
            .await?;
        let r: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(r["status"] == "success", "{q}: {r}");
    }
    Ok(())
}

/// A program on PATH.
fn which(program: &str) -> Result<std::path::PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(program))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{program} is not on PATH"))
}

/// prometheus-client registries of every kind the daemons use, with
/// label values that need escaping.
fn label_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\n".to_string()),
            Just(" # {".to_string()),
            Just("}".to_string()),
            "[a-zA-Z0-9é水 _.:-]{1,4}",
        ],
        1..4,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn generated_registries_pass_promtool_and_keep_every_sample(
        counters in proptest::collection::vec((label_value(), 0u64..1_000_000), 0..4),
        float_counter in proptest::option::of(0f64..1e12),
        gauges in proptest::collection::vec((label_value(), -1e9f64..1e9), 0..4),
        observations in proptest::collection::vec(0f64..10.0, 0..6),
    ) {
        if let Some(why) = tools_missing() {
            eprintln!("SKIPPED: {why}");
            return Ok(());
        }
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
        use std::sync::atomic::AtomicU64;
        let mut registry = prometheus_client::registry::Registry::default();
        let sub = registry.sub_registry_with_prefix("hostplane");
        let c = Family::<Vec<(String, String)>, Counter>::default();
        let fc = Counter::<f64, AtomicU64>::default();
        let g = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        let h = Histogram::new([0.5, 1.0, 5.0]);
        sub.register("things", "Things counted", c.clone());
        sub.register("energy_joules", "Energy used", fc.clone());
        sub.register("level", "A level", g.clone());
        sub.register("latency_seconds", "Latency", h.clone());
        for (v, n) in &counters {
            c.get_or_create(&vec![("source".into(), v.clone())]).inc_by(*n);
        }
        if let Some(j) = float_counter {
            fc.inc_by(j);
        }
        for (v, x) in &gauges {
            g.get_or_create(&vec![("scope".into(), v.clone())]).set(*x);
        }
        for o in &observations {
            h.observe(*o);
        }
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        let text = exposition::encode(exposition::Format::Text004, om.clone()).unwrap();
        let r = check_pair("a generated registry", &text, &om, true);
        prop_assert!(r.is_ok(), "{:?}", r.err());
    }
}

/// A reminder that a failing check can fail: a body served as the issue
/// found it (OpenMetrics as text 0.0.4) does not pass promtool.
#[test]
fn promtool_refuses_openmetrics_served_as_text() -> Result<()> {
    require_tools!();
    let om = "# HELP hostplane_energy_joules Energy used.\n# TYPE hostplane_energy_joules counter\nhostplane_energy_joules_total 1.0\n# EOF\n";
    if promtool_check_metrics("the old body", om).is_ok() {
        bail!("promtool accepted a counter family named without _total");
    }
    promtool_check_metrics("the converted body", &exposition::to_text_004(om)?)
}
