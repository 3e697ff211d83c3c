use std::sync::Arc;

use hostplane_proto::v1::PowerLimit;

use super::*;
use std::path::Path;

use crate::power::rapl::RaplLimiter;

/// A limiter that records what it was asked and enforces it exactly.
struct Fake {
    element: PowerElement,
    device: String,
    range: Option<(f64, f64)>,
    log: Log,
    fail: Option<String>,
}

impl Limiter for Fake {
    fn element(&self) -> PowerElement {
        self.element
    }
    fn device(&self) -> &str {
        &self.device
    }
    fn method(&self) -> &'static str {
        "fake"
    }
    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        Box::pin(async move { self.range })
    }
    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        Box::pin(async move {
            self.log.lock().unwrap().push((self.device.clone(), watts));
            match &self.fail {
                Some(e) => Err(LimitError::Device(e.clone())),
                None => Ok(watts),
            }
        })
    }
}

type Log = Arc<Mutex<Vec<(String, Option<f64>)>>>;

fn fake(element: PowerElement, device: &str, range: Option<(f64, f64)>, log: &Log) -> Box<dyn Limiter> {
    Box::new(Fake {
        element,
        device: device.into(),
        range,
        log: log.clone(),
        fail: None,
    })
}

fn caps(node: f64, safe: f64, limits: Vec<PowerLimit>) -> PowerCaps {
    PowerCaps {
        node_watts: node,
        device_limits: limits,
        lease_seconds: 10,
        safe_node_watts: safe,
        policy: "p".into(),
        topology: "t".into(),
    }
}

fn gpu_percent(p: f64) -> PowerLimit {
    PowerLimit {
        element: PowerElement::Gpu as i32,
        value: Some(power_limit::Value::Percent(p)),
    }
}

fn cpu_watts(w: f64) -> PowerLimit {
    PowerLimit {
        element: PowerElement::Cpu as i32,
        value: Some(power_limit::Value::Watts(w)),
    }
}

fn status<'a>(r: &'a PowerCapReport, dev: &str) -> &'a CapStatus {
    r.caps
        .iter()
        .find(|c| c.device == dev)
        .unwrap_or_else(|| panic!("no {dev} in {r:?}"))
}

#[tokio::test]
async fn caps_resolve_per_device_and_report_requested_vs_effective() {
    let log = Log::default();
    let e = Enforcer::new(vec![
        fake(PowerElement::Node, "node", Some((2000.0, 10200.0)), &log),
        fake(PowerElement::Gpu, "gpu0", Some((200.0, 700.0)), &log),
        fake(PowerElement::Gpu, "gpu1", Some((200.0, 700.0)), &log),
        fake(PowerElement::Cpu, "intel-rapl:0", Some((0.0, 350.0)), &log),
    ]);
    let r = e
        .enforce(
            4,
            Some(&caps(6000.0, 3000.0, vec![gpu_percent(50.0), cpu_watts(120.0)])),
            false,
        )
        .await;
    assert_eq!(r.version, 4);
    assert!(!r.safe_mode);
    assert_eq!(status(&r, "node").effective_watts, 6000.0);
    assert_eq!(
        status(&r, "gpu0").requested_watts,
        350.0,
        "50% of the GPU's 700 W maximum"
    );
    assert_eq!(status(&r, "gpu1").effective_watts, 350.0);
    assert_eq!(status(&r, "intel-rapl:0").effective_watts, 120.0);
    assert!(r.caps.iter().all(|c| c.error.is_empty()), "{r:?}");
}

#[tokio::test]
async fn a_cap_below_the_device_minimum_is_raised_and_said() {
    let log = Log::default();
    let e = Enforcer::new(vec![fake(
        PowerElement::Node,
        "node",
        Some((2000.0, 10200.0)),
        &log,
    )]);
    let r = e.enforce(1, Some(&caps(1500.0, 0.0, vec![])), false).await;
    let n = status(&r, "node");
    assert_eq!((n.requested_watts, n.effective_watts), (1500.0, 2000.0));
    assert!(n.error.contains("below the 2000 W minimum"), "{}", n.error);
}

#[tokio::test]
async fn safe_mode_uses_the_safe_cap_and_lifting_caps_resets_only_touched_devices() {
    let log = Log::default();
    let e = Enforcer::new(vec![
        fake(PowerElement::Node, "node", None, &log),
        fake(PowerElement::Gpu, "gpu0", Some((100.0, 700.0)), &log),
    ]);
    let r = e.enforce(1, Some(&caps(6000.0, 3000.0, vec![])), true).await;
    assert!(r.safe_mode);
    assert_eq!(status(&r, "node").effective_watts, 3000.0);
    assert!(
        !r.caps.iter().any(|c| c.device == "gpu0"),
        "no GPU limit: the GPU is not touched"
    );
    log.lock().unwrap().clear();
    // Uncapped: the node limit is lifted, the never-touched GPU left alone.
    let r = e.enforce(2, None, false).await;
    assert_eq!(*log.lock().unwrap(), vec![("node".to_string(), None)]);
    assert_eq!(status(&r, "node").effective_watts, 0.0);
    log.lock().unwrap().clear();
    // Lifted once: nothing more to do.
    let r = e.enforce(3, None, false).await;
    assert!(r.caps.is_empty());
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_means_the_report_says_so() {
    let log = Log::default();
    let e = Enforcer::new(vec![fake(PowerElement::Gpu, "gpu0", None, &log)]);
    let r = e
        .enforce(1, Some(&caps(5000.0, 0.0, vec![gpu_percent(80.0)])), false)
        .await;
    assert!(
        status(&r, "node")
            .error
            .contains("no means to enforce a node cap")
    );
    assert!(
        status(&r, "gpu0").error.contains("does not report"),
        "a percent without a maximum is refused, not guessed"
    );
    let failing = Enforcer::new(vec![Box::new(Fake {
        element: PowerElement::Node,
        device: "node".into(),
        range: None,
        log: log.clone(),
        fail: Some("BMC said 500".into()),
    })]);
    let r = failing.enforce(1, Some(&caps(5000.0, 0.0, vec![])), false).await;
    assert_eq!(status(&r, "node").error, "BMC said 500");
}

fn rapl_zone(root: &Path, dev: &str, name: &str, limit_uw: u64, max_uw: u64) -> PathBuf {
    let z = root.join("class/powercap").join(dev);
    std::fs::create_dir_all(&z).unwrap();
    std::fs::write(z.join("name"), format!("{name}\n")).unwrap();
    std::fs::write(z.join("constraint_0_power_limit_uw"), format!("{limit_uw}\n")).unwrap();
    std::fs::write(z.join("constraint_0_max_power_uw"), format!("{max_uw}\n")).unwrap();
    z
}

#[tokio::test]
async fn rapl_constraints_are_written_and_restored() {
    let d = tempfile::tempdir().unwrap();
    let pkg = rapl_zone(d.path(), "intel-rapl:0", "package-0", 250_000_000, 350_000_000);
    rapl_zone(d.path(), "intel-rapl:0:0", "core", 0, 0);
    let dram = rapl_zone(d.path(), "intel-rapl:0:1", "dram", 40_000_000, 60_000_000);
    rapl_zone(d.path(), "intel-rapl:1", "psys", 900_000_000, 1_000_000_000);
    let found = RaplLimiter::discover(d.path());
    let kinds: Vec<(&str, PowerElement)> = found.iter().map(|l| (l.device(), l.element())).collect();
    assert_eq!(
        kinds,
        vec![
            ("intel-rapl:0", PowerElement::Cpu),
            ("intel-rapl:0:1", PowerElement::Memory),
            ("intel-rapl:1", PowerElement::Node),
        ],
        "core zones are not limiters"
    );
    let e = Enforcer::new(
        found
            .into_iter()
            .map(|l| Box::new(l) as Box<dyn Limiter>)
            .collect(),
    );
    let mem = PowerLimit {
        element: PowerElement::Memory as i32,
        value: Some(power_limit::Value::Percent(50.0)),
    };
    let r = e
        .enforce(1, Some(&caps(700.0, 0.0, vec![cpu_watts(150.0), mem])), false)
        .await;
    assert!(r.caps.iter().all(|c| c.error.is_empty()), "{r:?}");
    let read = |z: &Path| std::fs::read_to_string(z.join("constraint_0_power_limit_uw")).unwrap();
    assert_eq!(read(&pkg), "150000000");
    assert_eq!(read(&dram), "30000000", "50% of the 60 W maximum");
    assert_eq!(
        status(&r, "intel-rapl:1").effective_watts,
        700.0,
        "psys carries the node cap"
    );
    e.enforce(2, None, false).await;
    assert_eq!(read(&pkg).trim(), "250000000", "the original limit is back");
    assert_eq!(read(&dram).trim(), "40000000");
}

/// A restart of the agent (a new Enforcer on the same state file) neither
/// forgets to lift a cap removed while it was down, nor takes its own cap
/// for the device's original limit.
#[tokio::test]
async fn what_was_limited_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path().join("power-caps.json");
    let pkg = rapl_zone(d.path(), "intel-rapl:0", "package-0", 250_000_000, 350_000_000);
    let read = |z: &Path| std::fs::read_to_string(z.join("constraint_0_power_limit_uw")).unwrap();
    let start = || {
        Enforcer::new(
            RaplLimiter::discover(d.path())
                .into_iter()
                .map(|l| Box::new(l) as Box<dyn Limiter>)
                .collect(),
        )
        .with_state_file(state.clone())
    };

    // Run 1 caps the package at 150 W, then "crashes".
    let e = start();
    e.enforce(1, Some(&caps(0.0, 0.0, vec![cpu_watts(150.0)])), false)
        .await;
    assert_eq!(read(&pkg), "150000000");
    drop(e);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["touched"]["intel-rapl:0"], 250_000_000u64,
        "the original is saved: {saved}"
    );

    // Run 2 gets a new cap first: the original stays the device's, not 150 W.
    let e = start();
    e.enforce(2, Some(&caps(0.0, 0.0, vec![cpu_watts(120.0)])), false)
        .await;
    assert_eq!(read(&pkg), "120000000");
    drop(e);

    // Run 3 starts with no caps at all (removed while the agent was down):
    // the package is lifted back to its own 250 W.
    let e = start();
    let r = e.enforce(3, None, false).await;
    assert_eq!(read(&pkg).trim(), "250000000", "{r:?}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        saved["touched"],
        serde_json::json!({}),
        "nothing is limited any more"
    );

    // An unreadable state file is not fatal: nothing counts as limited.
    std::fs::write(&state, "not json").unwrap();
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let e = Enforcer::new(vec![fake(PowerElement::Gpu, "gpu0", None, &log)]).with_state_file(state.clone());
    e.enforce(4, None, false).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "an untouched device is left alone"
    );
}

#[tokio::test(start_paused = true)]
async fn the_task_applies_the_safe_cap_after_the_lease_and_returns_when_heard() {
    let log = Log::default();
    let e = Enforcer::new(vec![fake(PowerElement::Node, "node", None, &log)]);
    let shutdown = CancellationToken::new();
    let mut h = spawn(e, CapsConfig::default(), &TaskTracker::new(), shutdown.clone());
    h.heard();
    h.set(5, Some(caps(6000.0, 3000.0, vec![])));
    let r = h.reports.recv().await.unwrap();
    assert_eq!(
        (r.version, r.safe_mode, status(&r, "node").effective_watts),
        (5, false, 6000.0)
    );
    // The lease is 10 s; keep the coordinator heard for 8 s: no change.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        h.heard();
    }
    assert!(h.reports.try_recv().is_err(), "no report while nothing changes");
    // Silence: after the lease the safe cap is applied.
    let r = h.reports.recv().await.unwrap();
    assert!(r.safe_mode);
    assert_eq!(status(&r, "node").effective_watts, 3000.0);
    // Heard again: back to the coordinator's cap.
    h.heard();
    let r = h.reports.recv().await.unwrap();
    assert!(!r.safe_mode);
    assert_eq!(status(&r, "node").effective_watts, 6000.0);
    shutdown.cancel();
}

/// Fails with `first` for its first `fails` calls, then enforces what it is asked.
struct Flaky {
    fails: std::sync::atomic::AtomicU32,
    transient: bool,
    calls: Arc<std::sync::atomic::AtomicU32>,
}

impl Limiter for Flaky {
    fn element(&self) -> PowerElement {
        PowerElement::Node
    }
    fn device(&self) -> &str {
        "node"
    }
    fn method(&self) -> &'static str {
        "flaky"
    }
    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        Box::pin(async { None })
    }
    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.fails.load(SeqCst) > 0 {
                self.fails.fetch_sub(1, SeqCst);
                return Err(if self.transient {
                    LimitError::BmcNotReached {
                        url: "https://bmc".into(),
                    }
                } else {
                    LimitError::Device("the device said no".into())
                });
            }
            Ok(watts)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_means_not_ready_yet_is_tried_again_at_the_next_tick_not_after_reverify() {
    for transient in [true, false] {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let e = Enforcer::new(vec![Box::new(Flaky {
            fails: 2.into(),
            transient,
            calls: calls.clone(),
        })]);
        let shutdown = CancellationToken::new();
        let cfg = CapsConfig {
            reverify_interval: Duration::from_secs(30),
            ..CapsConfig::default()
        };
        let mut h = spawn(e, cfg, &TaskTracker::new(), shutdown.clone());
        h.heard();
        h.set(1, Some(caps(5000.0, 0.0, vec![])));
        let r = h.reports.recv().await.unwrap();
        assert!(!status(&r, "node").error.is_empty(), "the first try fails: {r:?}");
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            h.heard();
        }
        let n = calls.load(std::sync::atomic::Ordering::SeqCst);
        if transient {
            assert_eq!(n, 3, "retried each tick until it took");
            let r = h.reports.try_recv().expect("a report once it took");
            assert_eq!(status(&r, "node").effective_watts, 5000.0);
            assert!(status(&r, "node").error.is_empty(), "{r:?}");
        } else {
            assert_eq!(n, 1, "a lasting failure waits for reverify_interval");
        }
        shutdown.cancel();
    }
}
