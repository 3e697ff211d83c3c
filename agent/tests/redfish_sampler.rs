//! The BMC in the daemon's sampler (cached readings with their age on
//! /metrics, an unreachable BMC as source_up 0), in `hostplane-agent power
//! read`, and the password kept out of logs, errors and Debug output.
mod redfish_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hostplane_agent::power::bmc::{self, BmcConfig, RedfishClient};
use hostplane_agent::power::sampler::{self, PowerConfig, PowerMetrics};
use prometheus_client::registry::Registry;
use redfish_support::{PASSWORD, Shape, USER};
use tokio_util::sync::CancellationToken;

fn password_file(dir: &tempfile::TempDir, password: &str) -> std::path::PathBuf {
    let p = dir.path().join("bmc-password");
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

fn bmc_config(url: &str, dir: &tempfile::TempDir, password: &str) -> BmcConfig {
    BmcConfig {
        url: url.into(),
        username: USER.into(),
        password_file: Some(password_file(dir, password)),
        poll_interval: Duration::from_millis(50),
        min_request_interval: Duration::from_millis(1),
        ..Default::default()
    }
}

async fn metrics_until(registry: &Registry, want: &str) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        text = hostplane_agent::metrics::render(registry);
        if text.contains(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never saw {want} in\n{text}");
}

#[tokio::test]
async fn the_sampler_publishes_cached_bmc_readings_and_shares_the_client() {
    let bmc = redfish_support::dgx(Shape::Modern, 2).await;
    let d = tempfile::tempdir().unwrap();
    let sysfs = tempfile::tempdir().unwrap();
    let metrics = PowerMetrics::default();
    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("hostplane"));
    let stop = CancellationToken::new();
    let cfg = PowerConfig {
        interval: Duration::from_millis(20),
        sysfs_root: sysfs.path().into(),
        bmc: bmc_config(&bmc.url, &d, PASSWORD),
        ..Default::default()
    };
    let h = sampler::spawn(
        cfg,
        metrics,
        None,
        &tokio_util::task::TaskTracker::new(),
        stop.clone(),
    );
    let link = h.bmc.clone().expect("power.bmc.url is set");
    metrics_until(
        &registry,
        "hostplane_power_watts{source=\"redfish\",scope=\"node\",device=\"DGX\"} 6123.5",
    )
    .await;
    let text = metrics_until(
        &registry,
        "hostplane_power_watts{source=\"redfish\",scope=\"gpu\",device=\"HGX_GPU_SXM_2\"} 601",
    )
    .await;
    assert!(
        text.contains("hostplane_power_source_up{source=\"redfish\",scope=\"node\",device=\"DGX\"} 1"),
        "{text}"
    );
    // Every request the poller made is counted; all of them answered 2xx.
    assert!(
        text.lines()
            .any(|l| l.starts_with("hostplane_bmc_requests_total{outcome=\"ok\"} ") && !l.ends_with(" 0")),
        "{text}"
    );

    // The readings carry their age; the client is the poller's.
    let r = link.readings(Instant::now());
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| r.age.is_some()), "{r:?}");
    let later = link.readings(Instant::now() + Duration::from_secs(30));
    assert!(later[0].age.unwrap() >= Duration::from_secs(30));
    let client = link.client().expect("connected");
    assert_eq!(client.set_node_limit(Some(7000.0)).await.unwrap(), Some(7000.0));

    // The poller follows the BMC: a changed reading shows up.
    bmc.edit("/redfish/v1/Chassis/DGX/EnvironmentMetrics", |v| {
        v["PowerWatts"]["Reading"] = 6999.0.into();
    });
    metrics_until(
        &registry,
        "hostplane_power_watts{source=\"redfish\",scope=\"node\",device=\"DGX\"} 6999",
    )
    .await;

    // Shutdown deletes the session.
    stop.cancel();
    h.task.await.unwrap();
    for _ in 0..100 {
        if bmc.fixture.tokens.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        bmc.fixture.tokens.lock().unwrap().is_empty(),
        "session deleted at shutdown"
    );
}

#[tokio::test]
async fn an_unreachable_bmc_is_source_up_0_with_the_reason() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let d = tempfile::tempdir().unwrap();
    let metrics = PowerMetrics::default();
    let link = bmc::poll::spawn(
        bmc_config(&url, &d, PASSWORD),
        metrics.bmc_requests.clone(),
        &tokio_util::task::TaskTracker::new(),
        CancellationToken::new(),
    );
    let mut r = Vec::new();
    for _ in 0..200 {
        r = link.readings(Instant::now());
        if !r.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (r[0].source, r[0].device.as_str(), r[0].watts),
        ("redfish", "bmc", None)
    );
    let e = r[0].error.as_deref().unwrap();
    assert!(
        e.starts_with(&format!("cannot use the BMC at {url}: GET {url}/redfish/v1: ")),
        "{e}"
    );
    assert!(link.client().is_none());

    let mut registry = Registry::default();
    metrics.register(registry.sub_registry_with_prefix("hostplane"));
    metrics.record(&r, &mut Default::default(), &mut Default::default());
    let text = hostplane_agent::metrics::render(&registry);
    assert!(
        text.contains("hostplane_power_source_up{source=\"redfish\",scope=\"node\",device=\"bmc\"} 0"),
        "{text}"
    );
    // The refused connect was counted as unreachable, and nothing as ok.
    assert!(
        text.lines().any(
            |l| l.starts_with("hostplane_bmc_requests_total{outcome=\"unreachable\"} ") && !l.ends_with(" 0")
        ),
        "{text}"
    );
    assert!(
        !text.contains("hostplane_bmc_requests_total{outcome=\"ok\"}"),
        "{text}"
    );
}

#[test]
fn power_read_shows_the_bmc() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bmc = rt.block_on(redfish_support::dgx(Shape::Modern, 1));
    let d = tempfile::tempdir().unwrap();
    let pw = password_file(&d, PASSWORD);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
            .args(["power", "read", "--interval", "10ms", "--sysfs-root"])
            .arg(d.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "-o",
        "json",
        "--bmc-url",
        &bmc.url,
        "--bmc-username",
        USER,
        "--bmc-password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One document; the BMC read twice, so energy is a measured delta (the
    // fixture's counter does not move), not a first read's 0.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines = doc["readings"].as_array().unwrap();
    let bmc_lines: Vec<_> = lines.iter().filter(|l| l["source"] == "redfish").collect();
    assert_eq!(bmc_lines.len(), 2, "{lines:?}");
    assert_eq!(bmc_lines[0]["device"], "DGX");
    assert_eq!(bmc_lines[0]["scope"], "node");
    assert_eq!(bmc_lines[0]["watts"], 6123.5);
    assert_eq!(bmc_lines[0]["energy_joules"], 0.0);
    assert_eq!(bmc_lines[1]["device"], "HGX_GPU_SXM_1");
    assert!(bmc.fixture.tokens.lock().unwrap().is_empty(), "the CLI logs out");

    // The same BMC from an agent config file, as a table.
    let cfg = d.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "power:\n  bmc:\n    url: {}\n    username: {USER}\n    password_file: {}\n",
            bmc.url,
            pw.display()
        ),
    )
    .unwrap();
    let out = run(&["--config", cfg.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("redfish  node     DGX ") && l.contains("6123.5")),
        "{table}"
    );

    // A wrong password: the reading says why; the command still reads the rest.
    let wrong = d.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let out = run(&[
        "-o",
        "json",
        "--bmc-url",
        &bmc.url,
        "--bmc-username",
        USER,
        "--bmc-password-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bmc = doc["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["source"] == "redfish")
        .unwrap_or_else(|| panic!("{doc}"));
    let e = bmc["reason"].as_str().unwrap();
    assert!(e.contains("401 Unauthorized"), "{e}");

    // A bad BMC setting is a config error (78), naming the key.
    let out = run(&["--bmc-url", "bmc.example"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power.bmc.url"));
}

/// A writer the test's subscriber logs into.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: the thread-local subscriber sees every task.
#[tokio::test(flavor = "current_thread")]
async fn the_password_is_never_logged_nor_shown() {
    let logs = Captured::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let d = tempfile::tempdir().unwrap();
    let mut shown = Vec::new();
    for sessions in [true, false] {
        let bmc =
            redfish_support::serve(redfish_support::resources(Shape::Modern, 1, sessions), sessions).await;
        let mut cfg = bmc_config(&bmc.url, &d, PASSWORD);
        cfg.insecure_tls = true;
        shown.push(format!("{cfg:?}"));
        let c = RedfishClient::connect(&cfg).await.unwrap();
        bmc.drop_sessions();
        shown.push(format!("{c:?}"));
        shown.push(format!("{:?}", c.sample().await));
        shown.push(format!("{:?}", c.set_node_limit(Some(1.0)).await));
        c.logout().await;
        // A poller through a failure and back.
        let stop = CancellationToken::new();
        let link = bmc::poll::spawn(
            cfg.clone(),
            Default::default(),
            &tokio_util::task::TaskTracker::new(),
            stop.clone(),
        );
        shown.push(format!("{:?}", link.wait_client().await));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wrong passwords: the errors must not echo what was tried either.
    let bmc = redfish_support::dgx(Shape::Modern, 1).await;
    let wrong = "wr0ng-Pa55-tried";
    let e = RedfishClient::connect(&bmc_config(&bmc.url, &d, wrong))
        .await
        .unwrap_err();
    shown.push(format!("{e} {e:?}"));
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&logs.0.lock().unwrap()),
        shown.join("\n")
    );
    assert!(all.contains("BMC connected"), "the logs were captured: {all}");
    assert!(all.contains("insecure_tls"), "{all}");
    assert!(!all.contains(PASSWORD), "the password leaked:\n{all}");
    assert!(!all.contains(wrong), "the wrong password leaked:\n{all}");
    assert!(!all.contains("token-"), "a session token leaked:\n{all}");
    let basic = redfish_support::basic(USER, PASSWORD);
    assert!(
        !all.contains(basic.trim_start_matches("Basic ")),
        "the Basic header leaked"
    );
}
