//! Power telemetry from the node's local sources (issue 4, first part):
//! RAPL through powercap sysfs and hwmon. Every reading says where it came
//! from, what it covers, whether it was measured or integrated, over which
//! window, and — when a source cannot be read — why; never a silent 0.
//!
//! Files are opened once and read with positional reads (`pread`), so a
//! sample costs no `open`/`close` and memory stays constant.
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub mod caps;
pub mod cli;
pub mod hwmon;
pub mod nvml;
pub mod rapl;
pub mod redfish;
pub mod sampler;
pub mod telemetry;

/// What a reading covers. Overlapping scopes (psys contains package, which
/// contains core) are reported side by side and never summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Node,
    Psys,
    Package,
    Core,
    Uncore,
    Dram,
    Gpu,
    Other,
}

/// How the watts were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The device reported power directly.
    Measured,
    /// Derived from two energy counter readings over `window`.
    Integrated,
}

/// One reading of one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// `rapl`, `hwmon`.
    pub source: &'static str,
    pub scope: Scope,
    /// e.g. `intel-rapl:0`, `hwmon3/power1`.
    pub device: String,
    /// None until the source has two samples (an integrated reading), or when it cannot be read.
    pub watts: Option<f64>,
    /// Cumulative energy since the agent started reading it (wraps handled).
    pub energy_joules: Option<f64>,
    pub method: Method,
    /// The interval the watts cover (integrated readings).
    #[serde(with = "humantime_serde")]
    pub window: Option<Duration>,
    /// How old the value is when sampled: None for a value read now; set for
    /// a cached reading (the BMC is polled less often than the sample rate).
    #[serde(with = "humantime_serde")]
    pub age: Option<Duration>,
    /// Why there is no value, when there is none.
    pub error: Option<String>,
}

impl Reading {
    /// A source that cannot be read: no value, and why.
    pub fn unavailable(source: &'static str, scope: Scope, device: String, why: String) -> Reading {
        Reading {
            source,
            scope,
            device,
            watts: None,
            energy_joules: None,
            method: Method::Measured,
            window: None,
            age: None,
            error: Some(why),
        }
    }
}

/// A file kept open and read with `pread` at offset 0.
#[derive(Debug)]
pub struct Counter {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

impl Counter {
    pub fn open(path: &Path) -> io::Result<Counter> {
        Ok(Counter {
            path: path.to_path_buf(),
            file: File::open(path)?,
            buf: vec![0; 32],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the file's number (sysfs files are re-generated on every read at offset 0).
    pub fn read_u64(&mut self) -> io::Result<u64> {
        let n = self.file.read_at(&mut self.buf, 0)?;
        let text =
            std::str::from_utf8(&self.buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {:?} is not a number", self.path.display(), text.trim()),
            )
        })
    }
}

/// Why a file cannot be read, in words an operator can act on.
pub fn why(path: &Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "permission denied reading {} (since Linux 5.10 RAPL energy is root-only; run the agent as root or grant read access)",
            path.display()
        ),
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        _ => format!("{}: {e}", path.display()),
    }
}

/// Energy delta between two readings of a counter that wraps at `max_range`
/// (RAPL's `max_energy_range_uj`): at most one wrap between samples.
pub fn wrapping_delta(prev: u64, cur: u64, max_range: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        max_range
            .saturating_sub(prev)
            .saturating_add(cur)
            .saturating_add(1)
    }
}

/// Turns readings of a µJ energy counter into watts and cumulative joules.
/// The first reading (or the first after [`Integrator::reset`]) gives energy
/// but no rate, so a start or an error never becomes a wild wattage.
#[derive(Debug, Clone)]
pub struct Integrator {
    /// The counter's wrap point (`max_energy_range_uj`; `u64::MAX` when unknown).
    max_range: u64,
    last: Option<(u64, std::time::Instant)>,
    total_uj: u128,
}

impl Integrator {
    pub fn new(max_range: u64) -> Integrator {
        Integrator {
            max_range,
            last: None,
            total_uj: 0,
        }
    }

    /// Forget the last reading (after an error).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Fold in the counter value `cur` read at `now`; fills the reading's
    /// `energy_joules`, and `watts` and `window` when there is a rate.
    pub fn add(&mut self, cur: u64, now: std::time::Instant, r: &mut Reading) {
        if let Some((prev, at)) = self.last {
            let delta = wrapping_delta(prev, cur, self.max_range);
            self.total_uj += u128::from(delta);
            let window = now.saturating_duration_since(at);
            if window > Duration::ZERO {
                r.watts = Some(delta as f64 / 1e6 / window.as_secs_f64());
                r.window = Some(window);
            }
        }
        r.energy_joules = Some(self.total_uj as f64 / 1e6);
        self.last = Some((cur, now));
    }
}

/// All local sources of a node.
pub struct Sources {
    pub rapl: rapl::Rapl,
    pub hwmon: hwmon::Hwmon,
    pub gpus: nvml::Gpus,
}

impl Sources {
    /// Find every source under `sysfs_root` (`/sys` in production).
    pub fn discover(sysfs_root: &Path) -> Sources {
        Sources {
            rapl: rapl::Rapl::discover(sysfs_root),
            hwmon: hwmon::Hwmon::discover(sysfs_root),
            gpus: nvml::Gpus::discover(),
        }
    }

    /// Read every source once (blocking file reads: call off the async runtime).
    pub fn sample(&mut self, now: std::time::Instant) -> Vec<Reading> {
        let mut out = self.rapl.sample(now);
        out.extend(self.hwmon.sample());
        out.extend(self.gpus.sample(now));
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn delta_without_and_with_a_wrap() {
        assert_eq!(wrapping_delta(100, 250, 1000), 150);
        assert_eq!(wrapping_delta(900, 100, 999), 200, "900 -> 999 -> 0 -> 100");
        assert_eq!(wrapping_delta(5, 5, 1000), 0);
    }

    proptest! {
        // Whatever the counter's range and position, the delta computed across
        // a wrap equals the energy actually added.
        #[test]
        fn delta_equals_the_energy_added(max in 1_000u64..u64::MAX / 4, start_frac in 0.0f64..1.0, add_frac in 0.0f64..0.99) {
            let prev = (max as f64 * start_frac) as u64 % (max + 1);
            let add = (max as f64 * add_frac) as u64;
            let cur = (prev + add) % (max + 1);
            prop_assert_eq!(wrapping_delta(prev, cur, max), add);
        }
    }

    #[test]
    fn counters_read_with_pread_again_and_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("energy_uj");
        std::fs::write(&p, "123\n").unwrap();
        let mut c = Counter::open(&p).unwrap();
        assert_eq!(c.read_u64().unwrap(), 123);
        std::fs::write(&p, "456789\n").unwrap();
        assert_eq!(
            c.read_u64().unwrap(),
            456789,
            "the same handle sees the new value"
        );
        std::fs::write(&p, "x\n").unwrap();
        assert!(c.read_u64().unwrap_err().to_string().contains("not a number"));
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(why(&p, &e).contains("root-only"));
    }
}
