//! The process's own resources, read from `/proc/self` at every scrape,
//! under the names every Prometheus client library uses (so the usual
//! dashboards and alerts work unchanged). Both daemons register it.
use prometheus_client::registry::Registry;

/// Clock ticks per second of the times in `/proc/<pid>/stat`: Linux's
/// `USER_HZ`, 100 on every architecture hostplane runs on (it is part of
/// the kernel's ABI, whatever the kernel's own HZ).
const USER_HZ: f64 = 100.0;

/// The process's own resources under the conventional names:
/// `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
/// `process_start_time_seconds`, `process_open_fds`, `process_max_fds` and
/// `process_threads`. Nothing is reported for what cannot be read (not
/// Linux, `/proc` not mounted).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Register at the top of `registry`: the names carry no `hostplane_`
    /// prefix (the `job`/`instance` labels say whose process it is).
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessCollector));
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let mut gauge = |name: &str, help: &str, v: f64| -> std::fmt::Result {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        if let Some(kib) = status.as_deref().and_then(|s| status_kib(s, "VmRSS:")) {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                kib.saturating_mul(1024) as f64,
            )?;
        }
        if let Some(kib) = status.as_deref().and_then(|s| status_kib(s, "VmSize:")) {
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                kib.saturating_mul(1024) as f64,
            )?;
        }
        if let Some(threads) = status.as_deref().and_then(threads) {
            gauge(
                "process_threads",
                "Number of OS threads in the process",
                threads as f64,
            )?;
        }
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        if let (Some(start), Some(boot)) = (stat.as_deref().and_then(start_ticks), boot) {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                boot as f64 + start as f64 / USER_HZ,
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle read_dir holds is one of the entries.
            let open = fds.count().saturating_sub(1);
            gauge("process_open_fds", "Number of open file descriptors", open as f64)?;
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| max_fds(&s))
        {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        if let Some(ticks) = stat.as_deref().and_then(cpu_ticks) {
            let c = ConstCounter::new(ticks as f64 / USER_HZ);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        Ok(())
    }
}

/// The fields of `/proc/<pid>/stat` after the command name, which is in
/// parentheses and may itself hold spaces and parentheses; the first is
/// field 3 (state).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// utime(14) + stime(15), in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut f = stat_fields(stat)?.skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// starttime(22): clock ticks after boot when the process started.
fn start_ticks(stat: &str) -> Option<u64> {
    stat_fields(stat)?.nth(19)?.parse().ok()
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A `Key:  12345 kB` line of `/proc/<pid>/status`, in KiB (no page size
/// to know).
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix(key))?;
    v.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// `Threads:` of `/proc/<pid>/status`.
fn threads(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (none when
/// unlimited).
fn max_fds(limits: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        let stat =
            "4242 (hostplane (x) a) S 1 4242 4242 0 -1 4194560 1203 0 0 0 150 25 0 0 20 0 9 0 12345 1000 200";
        assert_eq!(cpu_ticks(stat), Some(175), "utime 150 + stime 25");
        assert_eq!(start_ticks(stat), Some(12345));
        assert_eq!(cpu_ticks("4242 (short) S 1"), None);
        assert_eq!(start_ticks("4242 (short) S 1"), None);
        let status = "Name:\thostplane-agent\nVmPeak:\t  900000 kB\nVmSize:\t  800000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(status_kib(status, "VmSize:"), Some(800000));
        assert_eq!(threads(status), Some(9));
        assert_eq!(
            status_kib("Name:\tkthreadd\n", "VmRSS:"),
            None,
            "kernel threads have no VmRSS"
        );
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764921600\nprocesses 9\n"),
            Some(1764921600)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(
            max_fds("Max open files            unlimited            unlimited            files\n"),
            None
        );
    }

    #[test]
    fn the_process_metrics_have_the_conventional_names() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        // Spend some CPU so the counter is not 0 on a coarse clock.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds counter"), "{text}");
        let rss = value("process_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 1e11, "{rss}");
        assert!(value("process_virtual_memory_bytes") >= rss, "{text}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} vs {now}"
        );
        assert!(
            value("process_open_fds") >= 3.0,
            "stdin, stdout, stderr at least: {text}"
        );
        assert!(value("process_threads") >= 1.0, "{text}");
        assert!(!text.contains("hostplane"), "no custom names: {text}");
    }
}
