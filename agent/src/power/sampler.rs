//! The daemon's sampler: reads every local source every `interval` (1 s by
//! default) off the async runtime and publishes the readings as Prometheus
//! metrics — `hostplane_energy_joules_total` counters and
//! `hostplane_power_watts` gauges labelled by source, scope and device, and
//! `hostplane_power_source_up` (0 with the reason in the log when a source
//! cannot be read, logged once per change of the reason; its watts gauge is
//! then removed rather than left at its last value), and the agent's own
//! health: how long a sample takes, the telemetry buffer, the process's CPU
//! time and memory. When
//! `power.bmc.url` is set, a poller reads the BMC every
//! `power.bmc.poll_interval` and each sample includes its last readings,
//! with their age.
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::bmc::BmcLink;
use super::telemetry::{Telemetry, TelemetryBuffer};
use super::{Reading, Sources};

pub use super::config::PowerConfig;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    pub scope: String,
    pub device: String,
}

#[derive(Debug, Clone)]
pub struct PowerMetrics {
    pub energy: Family<SourceLabels, Counter<f64, AtomicU64>>,
    pub watts: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    pub up: Family<SourceLabels, Gauge>,
    /// How long reading every local source once took.
    pub sample_duration: Histogram,
    /// Requests to the BMC, by outcome.
    pub bmc_requests: super::bmc::RequestCounts,
    /// Samples in the telemetry buffer (not yet acknowledged by the coordinator).
    pub telemetry_buffered: Gauge,
    /// Samples dropped from the full telemetry buffer, oldest first.
    pub telemetry_dropped: Counter,
}

impl Default for PowerMetrics {
    fn default() -> Self {
        PowerMetrics {
            energy: Family::default(),
            watts: Family::default(),
            up: Family::default(),
            // 100 µs .. ~3.3 s: a sysfs read takes microseconds, an NVML call milliseconds.
            sample_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1e-4, 2.0, 16,
            )),
            telemetry_buffered: Gauge::default(),
            telemetry_dropped: Counter::default(),
            bmc_requests: Family::default(),
        }
    }
}

impl PowerMetrics {
    /// Register with the `hostplane` prefix: `hostplane_energy_joules_total`,
    /// ... (the agent process's own `process_*` metrics are registered by
    /// `main`, whatever is enabled).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bmc_requests",
            "Requests sent to the BMC over Redfish, by outcome (ok, http_error, unreachable)",
            self.bmc_requests.clone(),
        );
        registry.register(
            "energy_joules",
            "Energy used, per source, since the agent started",
            self.energy.clone(),
        );
        registry.register(
            "power_watts",
            "Power drawn, per source, over the last sampling window",
            self.watts.clone(),
        );
        registry.register(
            "power_source_up",
            "1 when the source was read, 0 when it could not be",
            self.up.clone(),
        );
        registry.register(
            "power_sample_duration_seconds",
            "Time taken to read every local power source once",
            self.sample_duration.clone(),
        );
        registry.register(
            "power_telemetry_buffered_samples",
            "Samples in the telemetry buffer that the coordinator has not acknowledged",
            self.telemetry_buffered.clone(),
        );
        registry.register(
            "power_telemetry_dropped_samples",
            "Samples dropped, oldest first, because the telemetry buffer was full",
            self.telemetry_dropped.clone(),
        );
    }

    /// Put one sample into the telemetry buffer and count what that dropped.
    pub fn push_telemetry(&self, buffer: &mut TelemetryBuffer, readings: &[Reading], at_ms: i64) {
        let before = buffer.len();
        buffer.push(readings, at_ms);
        let after = buffer.len();
        // A full buffer drops its oldest sample to make room.
        self.telemetry_dropped
            .inc_by((before + 1).saturating_sub(after) as u64);
        self.telemetry_buffered
            .set(i64::try_from(after).unwrap_or(i64::MAX));
    }

    /// Fold one sample's readings into the metrics. `logged` remembers the
    /// error last logged per source, so a broken source logs once per
    /// reason, and once more when it recovers.
    pub fn record(
        &self,
        readings: &[Reading],
        last_energy: &mut HashMap<String, f64>,
        logged: &mut HashMap<String, String>,
    ) {
        for r in readings {
            let scope = serde_json::to_value(r.scope)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let l = SourceLabels {
                source: r.source.to_string(),
                scope,
                device: r.device.clone(),
            };
            let key = format!("{}/{}", r.source, r.device);
            if r.error.is_some() || r.watts.is_none() {
                // A source with no value now has no gauge, not a frozen one.
                self.watts.remove(&l);
            }
            match &r.error {
                Some(e) => {
                    self.up.get_or_create(&l).set(0);
                    if logged.get(&key) != Some(e) {
                        tracing::warn!(source = r.source, device = %r.device, error = %e, "power source unreadable");
                        logged.insert(key, e.clone());
                    }
                }
                None => {
                    self.up.get_or_create(&l).set(1);
                    if logged.remove(&key).is_some() {
                        tracing::info!(source = r.source, device = %r.device, "power source readable again");
                    }
                    if let Some(w) = r.watts {
                        self.watts.get_or_create(&l).set(w);
                    }
                    if let Some(e) = r.energy_joules {
                        let prev = last_energy.insert(key, e).unwrap_or(0.0);
                        if e > prev {
                            self.energy.get_or_create(&l).inc_by(e - prev);
                        }
                    }
                }
            }
        }
    }
}

/// The running sampler.
pub struct SamplerHandle {
    pub task: tokio::task::JoinHandle<()>,
    /// The BMC poller, when `power.bmc.url` is set: its
    /// [`BmcLink::client`] is the Redfish client for setting limits.
    pub bmc: Option<BmcLink>,
}

/// Sample every `cfg.interval` until `shutdown`; each sample also goes into
/// `telemetry` (for the coordinator) when given. With `power.bmc.url` set, a
/// BMC poller runs beside it and every sample carries its cached readings.
/// Both tasks belong to `tasks`; wait for it after `shutdown` so the BMC
/// poller can log out.
pub fn spawn(
    cfg: PowerConfig,
    metrics: PowerMetrics,
    telemetry: Option<Telemetry>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> SamplerHandle {
    let bmc = cfg.bmc.enabled().then(|| {
        super::bmc::poll::spawn(
            cfg.bmc.clone(),
            metrics.bmc_requests.clone(),
            tasks,
            shutdown.child_token(),
        )
    });
    let bmc_readings = bmc.clone();
    let task = tasks.spawn(
        async move {
            let root = cfg.sysfs_root.clone();
            let Ok(mut sources) = tokio::task::spawn_blocking(move || Sources::discover(&root)).await else {
                return;
            };
            if let Some(why) = &sources.rapl.absent {
                tracing::info!(%why, "no RAPL source");
            }
            if let Some(why) = &sources.gpus.absent {
                tracing::info!(%why, "no GPU source");
            }
            let mut last = HashMap::new();
            let mut logged = HashMap::new();
            let mut tick = tokio::time::interval(cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Ok((back, mut readings, took)) = tokio::task::spawn_blocking(move || {
                    let start = Instant::now();
                    let r = sources.sample(start);
                    (sources, r, start.elapsed())
                })
                .await
                else {
                    return;
                };
                sources = back;
                metrics.sample_duration.observe(took.as_secs_f64());
                if let Some(b) = &bmc_readings {
                    readings.extend(b.readings(Instant::now()));
                }
                metrics.record(&readings, &mut last, &mut logged);
                if let Some(t) = &telemetry {
                    metrics.push_telemetry(&mut t.lock(), &readings, hostplane_common::time::now_ms());
                }
            }
        }
        .instrument(tracing::info_span!("power")),
    );
    SamplerHandle { task, bmc }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::telemetry::TelemetryConfig;
    use super::*;

    #[tokio::test]
    async fn readings_become_counters_and_gauges() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("class/powercap/intel-rapl:0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("name"), "package-0\n").unwrap();
        std::fs::write(z.join("max_energy_range_uj"), "1000000000\n").unwrap();
        std::fs::write(z.join("energy_uj"), "0\n").unwrap();
        let h = t.path().join("class/hwmon/hwmon0");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("power1_input"), "100000000\n").unwrap();
        let metrics = PowerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(registry.sub_registry_with_prefix("hostplane"));
        let stop = CancellationToken::new();
        let cfg = PowerConfig {
            interval: Duration::from_millis(20),
            sysfs_root: t.path().into(),
            ..Default::default()
        };
        let task = spawn(cfg, metrics, None, &TaskTracker::new(), stop.clone()).task;
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::fs::write(z.join("energy_uj"), "2000000\n").unwrap();
        let mut text = String::new();
        for _ in 0..100 {
            text = crate::metrics::render(&registry);
            if text.contains(
                "hostplane_energy_joules_total{source=\"rapl\",scope=\"package\",device=\"intel-rapl:0\"} 2",
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            text.contains(
                "hostplane_energy_joules_total{source=\"rapl\",scope=\"package\",device=\"intel-rapl:0\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hostplane_power_watts{source=\"hwmon\",scope=\"other\",device=\"hwmon0/power1_input\"} 100"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "hostplane_power_source_up{source=\"rapl\",scope=\"package\",device=\"intel-rapl:0\"} 1"
            ),
            "{text}"
        );
        let samples: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("hostplane_power_sample_duration_seconds_count "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample duration in {text}"));
        assert!(samples >= 2, "{text}");
        stop.cancel();
        task.await.unwrap();
    }

    fn registered() -> (PowerMetrics, Registry) {
        let metrics = PowerMetrics::default();
        let mut registry = Registry::default();
        metrics.register(registry.sub_registry_with_prefix("hostplane"));
        (metrics, registry)
    }

    fn reading(watts: Option<f64>, error: Option<&str>) -> Reading {
        Reading {
            source: "hwmon",
            scope: super::super::Scope::Other,
            device: "hwmon0/power1_input".into(),
            watts,
            energy_joules: None,
            method: super::super::Method::Measured,
            window: None,
            age: None,
            error: error.map(String::from),
        }
    }

    #[test]
    fn a_source_that_fails_loses_its_watts_gauge() {
        let (metrics, registry) = registered();
        let (mut last, mut logged) = (HashMap::new(), HashMap::new());
        let gauge = "hostplane_power_watts{source=\"hwmon\",scope=\"other\",device=\"hwmon0/power1_input\"}";
        let up = "hostplane_power_source_up{source=\"hwmon\",scope=\"other\",device=\"hwmon0/power1_input\"}";
        metrics.record(&[reading(Some(250.0), None)], &mut last, &mut logged);
        let text = crate::metrics::render(&registry);
        assert!(text.contains(&format!("{gauge} 250")), "{text}");
        assert!(text.contains(&format!("{up} 1")), "{text}");

        metrics.record(
            &[reading(None, Some("permission denied"))],
            &mut last,
            &mut logged,
        );
        let text = crate::metrics::render(&registry);
        assert!(
            !text.contains(gauge),
            "a dead source is not a frozen number: {text}"
        );
        assert!(text.contains(&format!("{up} 0")), "{text}");

        metrics.record(&[reading(Some(260.0), None)], &mut last, &mut logged);
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains(&format!("{gauge} 260")),
            "back with its new value: {text}"
        );
        metrics.record(&[reading(None, None)], &mut last, &mut logged);
        let text = crate::metrics::render(&registry);
        assert!(
            !text.contains(gauge),
            "no watts (a first sample) is no gauge either: {text}"
        );
    }

    #[test]
    fn the_telemetry_buffer_depth_and_drops_are_served() {
        let (metrics, registry) = registered();
        let cfg = TelemetryConfig {
            buffer_samples: 3,
            ..Default::default()
        };
        let mut buffer = TelemetryBuffer::new(1, &cfg);
        for i in 0..5 {
            metrics.push_telemetry(&mut buffer, &[], i);
        }
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("hostplane_power_telemetry_buffered_samples 3\n"),
            "{text}"
        );
        assert!(
            text.contains("hostplane_power_telemetry_dropped_samples_total 2\n"),
            "{text}"
        );
        buffer.next_batch().unwrap();
        buffer.ack(&hostplane_proto::v1::TelemetryAck { epoch: 1, seq: 5 });
        metrics.push_telemetry(&mut buffer, &[], 6);
        let text = crate::metrics::render(&registry);
        assert!(
            text.contains("hostplane_power_telemetry_buffered_samples 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hostplane_power_telemetry_dropped_samples_total 2\n"),
            "no drop while there is room: {text}"
        );
    }
}
