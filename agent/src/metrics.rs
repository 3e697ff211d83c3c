//! The agent's Prometheus endpoint: `GET /metrics` in the text exposition
//! format, from one registry that each component registers into under its
//! own prefix (no global metrics). Off unless `metrics.listen` is set.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The `metrics:` section of the agent config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`; unset = no endpoint.
    pub listen: Option<SocketAddr>,
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`: Linux's
/// `USER_HZ`, 100 on every architecture the agent runs on (it is part of
/// the kernel's ABI, whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// The agent process's own CPU time and resident memory, read from
/// `/proc/self` at every scrape: `<prefix>_agent_cpu_seconds_total` and
/// `<prefix>_agent_resident_memory_bytes`. Nothing is reported for what
/// cannot be read (not Linux, `/proc` not mounted).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Register under `registry`'s prefix (`hostplane` in the daemon).
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessCollector));
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_ticks(&s))
        {
            let c = ConstCounter::new(ticks as f64 / USER_HZ);
            let m = encoder.encode_descriptor(
                "agent_cpu_seconds",
                "CPU time (user and system) the agent process used",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        if let Some(kib) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_kib(&s))
        {
            let g = ConstGauge::new(kib.saturating_mul(1024) as f64);
            let m = encoder.encode_descriptor(
                "agent_resident_memory_bytes",
                "Resident memory of the agent process",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// utime + stime (clock ticks) from `/proc/<pid>/stat`; the command name
/// in parentheses may itself hold spaces and parentheses.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state(3) ppid(4) ... utime(14) stime(15).
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory in KiB: `VmRSS:  12345 kB` in `/proc/<pid>/status`
/// (no page size to know).
fn resident_kib(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    v.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Render the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// Bind `listen` now (so a bad address fails at start) and serve until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    render(&registry),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    tracing::info!(%addr, "metrics endpoint serving /metrics");
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn the_endpoint_serves_the_registry() {
        let mut registry = Registry::default();
        let c: Counter = Counter::default();
        registry
            .sub_registry_with_prefix("hostplane_test")
            .register("things", "Things counted", c.clone());
        c.inc();
        let stop = CancellationToken::new();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry), stop.clone())
            .await
            .unwrap();
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("hostplane_test_things_total 1"), "{body}");
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn proc_stat_and_statm_are_parsed() {
        let stat =
            "4242 (hostplane (x) a) S 1 4242 4242 0 -1 4194560 1203 0 0 0 150 25 0 0 20 0 9 0 12345 1000 200";
        assert_eq!(cpu_ticks(stat), Some(175), "utime 150 + stime 25");
        assert_eq!(cpu_ticks("4242 (short) S 1"), None);
        let status = "Name:\thostplane-agent\nVmPeak:\t  900000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(resident_kib(status), Some(12345));
        assert_eq!(
            resident_kib("Name:\tkthreadd\n"),
            None,
            "kernel threads have no VmRSS"
        );
    }

    #[test]
    fn the_process_metrics_are_served() {
        let mut registry = Registry::default();
        ProcessCollector::register(registry.sub_registry_with_prefix("hostplane"));
        // Spend some CPU so the counter is not 0 on a coarse clock.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let text = render(&registry);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("hostplane_agent_cpu_seconds_total") > 0.0, "{text}");
        assert!(
            text.contains("# TYPE hostplane_agent_cpu_seconds counter"),
            "{text}"
        );
        let rss = value("hostplane_agent_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 1e11, "{rss}");
    }
}
