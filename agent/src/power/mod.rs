//! The node's power, organised by device facet, each with its reading and,
//! where the device has one, its limiting:
//! - [`rapl`]: powercap sysfs energy counters; package, dram and psys
//!   constraints ([`rapl::RaplLimiter`]);
//! - [`hwmon`]: hwmon power and energy sensors (read only: hwmon has no
//!   limit the agent sets);
//! - [`nvml`]: NVIDIA GPUs through one process-wide NVML handle; power
//!   management limits ([`nvml::NvmlLimiter`]);
//! - [`bmc`]: the host's BMC over Redfish, polled by [`bmc::poll`];
//!   the node's power limit ([`bmc::BmcNodeLimiter`]).
//!
//! On top: [`sampler`] (every facet's readings onto `/metrics` and into
//! [`telemetry`] for the coordinator), [`caps`] (the enforcer: the
//! coordinator's caps through the facets' limiters, the lease and the safe
//! cap) and [`cli`] (`hostplane-agent power`). Every reading says where it
//! came from, what it covers, whether it was measured or integrated, over
//! which window, and — when a source cannot be read — why; never a silent 0.
//!
//! Sysfs files are opened once and read with positional reads (`pread`), so
//! a sample costs no `open`/`close` and memory stays constant. File and NVML
//! calls run on blocking threads (the sampler's `spawn_blocking`, the
//! limiters' own), never on an async worker.
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub mod bmc;
pub mod caps;
pub mod cli;
pub mod config;
pub mod hwmon;
pub mod nvml;
pub mod rapl;
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
    pub fn read_u64(&mut self) -> Result<u64, ReadError> {
        let n = self
            .file
            .read_at(&mut self.buf, 0)
            .map_err(|e| ReadError::io(&self.path, &e))?;
        parse_u64(&self.path, &self.buf[..n])
    }
}

/// The number a sysfs file holds (`123\n`), or why it is not one.
pub fn parse_u64(path: &Path, bytes: &[u8]) -> Result<u64, ReadError> {
    let text = String::from_utf8_lossy(bytes);
    text.trim().parse().map_err(|_| ReadError::NotANumber {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// Why a sysfs file gave no number, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(
        "permission denied reading {} (since Linux 5.10 RAPL energy is root-only; run the agent as root or grant read access)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    /// The file was read but does not hold a number; `text` is what it holds.
    #[error("{}: {text:?} is not a number", path.display())]
    NotANumber { path: PathBuf, text: String },
    /// Any other I/O error; `reason` is the system's words for it.
    #[error("{}: {reason}", path.display())]
    Io {
        path: PathBuf,
        kind: io::ErrorKind,
        reason: String,
    },
}

impl ReadError {
    /// The error of an I/O failure on `path`.
    pub fn io(path: &Path, e: &io::Error) -> ReadError {
        let path = path.to_path_buf();
        match e.kind() {
            io::ErrorKind::PermissionDenied => ReadError::PermissionDenied { path },
            io::ErrorKind::NotFound => ReadError::NotFound { path },
            kind => ReadError::Io {
                path,
                kind,
                reason: e.to_string(),
            },
        }
    }

    /// The file that gave no number.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::PermissionDenied { path }
            | ReadError::NotFound { path }
            | ReadError::NotANumber { path, .. }
            | ReadError::Io { path, .. } => path,
        }
    }
}

/// Why a file cannot be read, in words an operator can act on (the
/// sentence of [`ReadError::io`]).
pub fn why(path: &Path, e: &io::Error) -> String {
    ReadError::io(path, e).to_string()
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

/// No source of this agent draws more: a rate above it comes from a counter
/// that was reset (a driver reload, a narrower accumulator than its range
/// says), never from the hardware, and is refused.
pub const MAX_PLAUSIBLE_WATTS: f64 = 100_000.0;

/// Turns readings of a µJ energy counter into watts and cumulative joules.
/// The first reading (or the first after [`Integrator::reset`]) gives energy
/// but no rate, so a start or an error never becomes a wild wattage. A
/// counter that goes back when its range is unknown, or moves faster than
/// [`MAX_PLAUSIBLE_WATTS`], was reset: that reading adds no energy, gives no
/// watts and says so in its `error`, and the next one counts from it.
#[derive(Debug, Clone)]
pub struct Integrator {
    /// The counter's wrap point (`max_energy_range_uj`); None when unknown:
    /// then a counter that goes back was reset, not wrapped.
    max_range: Option<u64>,
    last: Option<(u64, std::time::Instant)>,
    total_uj: u128,
}

impl Integrator {
    pub fn new(max_range: Option<u64>) -> Integrator {
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
    /// `energy_joules`, and `watts` and `window` when there is a rate, or
    /// `error` when the counter was reset.
    pub fn add(&mut self, cur: u64, now: std::time::Instant, r: &mut Reading) {
        let Some((prev, at)) = self.last.replace((cur, now)) else {
            r.energy_joules = Some(self.total_uj as f64 / 1e6);
            return;
        };
        let delta = match self.max_range {
            Some(max) => wrapping_delta(prev, cur, max),
            None if cur >= prev => cur - prev,
            None => {
                r.error = Some(format!(
                    "the energy counter went back from {prev} to {cur} µJ and its range is unknown: \
                     taken as a reset, counting again from {cur}"
                ));
                return;
            }
        };
        let window = now.saturating_duration_since(at);
        if window.is_zero() {
            // No time to spread the energy over: keep the earlier baseline.
            self.last = Some((prev, at));
            r.energy_joules = Some(self.total_uj as f64 / 1e6);
            return;
        }
        let watts = delta as f64 / 1e6 / window.as_secs_f64();
        if watts > MAX_PLAUSIBLE_WATTS {
            r.error = Some(format!(
                "the energy counter moved from {prev} to {cur} µJ in {window:?} ({watts:.0} W, \
                 above the {MAX_PLAUSIBLE_WATTS} W no source draws): taken as a reset, counting again from {cur}"
            ));
            return;
        }
        self.total_uj += u128::from(delta);
        r.watts = Some(watts);
        r.window = Some(window);
        r.energy_joules = Some(self.total_uj as f64 / 1e6);
    }
}

/// Samples between tries to reopen a counter that could not be opened or
/// read (a driver not loaded yet, a file re-created by a driver reload).
pub const REOPEN_EVERY: u32 = 30;

/// A [`Counter`] that is opened again every [`REOPEN_EVERY`] failed reads,
/// so a sensor that could not be read at start, or whose handle went stale,
/// comes back without a restart.
#[derive(Debug)]
pub struct ReopeningCounter {
    path: PathBuf,
    counter: Result<Counter, ReadError>,
    /// Failed reads in a row (or since the last try to open).
    failures: u32,
}

impl ReopeningCounter {
    /// Open `path` now; a failure is kept as the reading's error until a reopen works.
    pub fn open(path: &Path) -> ReopeningCounter {
        ReopeningCounter {
            path: path.to_path_buf(),
            counter: Counter::open(path).map_err(|e| ReadError::io(path, &e)),
            failures: 0,
        }
    }

    /// Read the number, or say why not.
    pub fn read_u64(&mut self) -> Result<u64, ReadError> {
        if self.counter.is_err() && self.failures >= REOPEN_EVERY {
            self.failures = 0;
            self.counter = Counter::open(&self.path).map_err(|e| ReadError::io(&self.path, &e));
        }
        let r = match &mut self.counter {
            Ok(c) => c.read_u64(),
            Err(e) => Err(e.clone()),
        };
        match &r {
            Ok(_) => self.failures = 0,
            Err(e) => {
                self.failures += 1;
                if self.failures >= REOPEN_EVERY {
                    // Drop the handle: the next read opens the file again.
                    self.counter = Err(e.clone());
                }
            }
        }
        r
    }
}

/// How often sources that found nothing (no RAPL zone, no hwmon sensor) are
/// looked for again: a module loaded after the agent started shows up.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(60);

/// All local sources of a node.
pub struct Sources {
    pub rapl: rapl::Rapl,
    pub hwmon: hwmon::Hwmon,
    pub gpus: nvml::Gpus,
    sysfs_root: PathBuf,
    /// When RAPL and hwmon were last looked for.
    discovered_at: std::time::Instant,
}

impl Sources {
    /// Find every source under `sysfs_root` (`/sys` in production).
    pub fn discover(sysfs_root: &Path) -> Sources {
        Sources {
            rapl: rapl::Rapl::discover(sysfs_root),
            hwmon: hwmon::Hwmon::discover(sysfs_root),
            gpus: nvml::Gpus::discover(),
            sysfs_root: sysfs_root.to_path_buf(),
            discovered_at: std::time::Instant::now(),
        }
    }

    /// Look for RAPL zones and hwmon sensors again when there were none,
    /// every [`REDISCOVER_EVERY`]; a source found is logged once.
    fn rediscover(&mut self, now: std::time::Instant) {
        if !(self.rapl.is_empty() || self.hwmon.is_empty())
            || now.saturating_duration_since(self.discovered_at) < REDISCOVER_EVERY
        {
            return;
        }
        self.discovered_at = now;
        if self.rapl.is_empty() {
            let rapl = rapl::Rapl::discover(&self.sysfs_root);
            if !rapl.is_empty() {
                tracing::info!(zones = rapl.len(), "RAPL zones found");
                self.rapl = rapl;
            }
        }
        if self.hwmon.is_empty() {
            let hwmon = hwmon::Hwmon::discover(&self.sysfs_root);
            if !hwmon.is_empty() {
                tracing::info!(sensors = hwmon.len(), "hwmon power sensors found");
                self.hwmon = hwmon;
            }
        }
    }

    /// Read every source once (blocking file reads: call off the async
    /// runtime). Sources that found nothing, or could not start, are
    /// looked for again now and then.
    pub fn sample(&mut self, now: std::time::Instant) -> Vec<Reading> {
        self.rediscover(now);
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

    fn blank() -> Reading {
        Reading {
            source: "test",
            scope: Scope::Other,
            device: "c".into(),
            watts: None,
            energy_joules: None,
            method: Method::Integrated,
            window: None,
            age: None,
            error: None,
        }
    }

    /// Feed `values` one second apart; the readings.
    fn integrate(max_range: Option<u64>, values: &[u64]) -> Vec<Reading> {
        let mut i = Integrator::new(max_range);
        let t0 = std::time::Instant::now();
        values
            .iter()
            .enumerate()
            .map(|(n, v)| {
                let mut r = blank();
                i.add(*v, t0 + Duration::from_secs(n as u64), &mut r);
                r
            })
            .collect()
    }

    #[test]
    fn a_counter_that_goes_back_with_an_unknown_range_was_reset() {
        let r = integrate(None, &[5_000_000, 6_000_000, 100, 1_000_100, 2_000_100]);
        assert_eq!((r[0].watts, r[0].energy_joules), (None, Some(0.0)));
        assert_eq!((r[1].watts, r[1].energy_joules), (Some(1.0), Some(1.0)));
        assert_eq!(r[2].watts, None, "no wattage from a reset: {:?}", r[2]);
        assert!(
            r[2].error
                .as_deref()
                .unwrap()
                .contains("went back from 6000000 to 100"),
            "{:?}",
            r[2]
        );
        assert_eq!(r[2].energy_joules, None);
        assert_eq!(
            (r[3].watts, r[3].energy_joules, r[3].error.as_deref()),
            (Some(1.0), Some(2.0), None),
            "counting goes on from the value after the reset"
        );
        assert_eq!(r[4].energy_joules, Some(3.0));
    }

    #[test]
    fn an_implausible_rate_is_taken_as_a_reset_even_with_a_known_range() {
        // A counter that says it wraps at 2^40 µJ but starts over (a driver
        // reload): it goes back from 4.5e9 to 1e3, a "wrap" of ~1.1e12 µJ in 1 s.
        let r = integrate(
            Some((1 << 40) - 1),
            &[4_000_000_000, 4_500_000_000, 1_000, 500_001_000],
        );
        assert_eq!(r[1].watts, Some(500.0));
        assert_eq!(r[2].watts, None, "{:?}", r[2]);
        let why = r[2].error.as_deref().unwrap();
        assert!(
            why.contains("taken as a reset") && why.contains("100000 W"),
            "{why}"
        );
        assert_eq!(
            (r[3].watts, r[3].energy_joules),
            (Some(500.0), Some(1000.0)),
            "500 J before the reset and 500 J after it"
        );
        // A real wrap at a plausible rate is still a wrap.
        let w = integrate(Some(999_999_999), &[999_900_000, 100_000]);
        assert_eq!(w[1].watts, Some(0.2), "{:?}", w[1]);
    }

    proptest! {
        // Whatever the counter does (resets, wraps, garbage, any range), no
        // reading is above the plausibility bound and the energy never goes
        // back nor grows faster than the bound allows.
        #[test]
        fn no_counter_sequence_gives_a_wild_wattage(
            max in prop::option::of(1u64..u64::MAX),
            steps in prop::collection::vec((any::<u64>(), 1u64..10_000), 1..40),
        ) {
            let mut i = Integrator::new(max);
            let mut now = std::time::Instant::now();
            let mut last_energy = 0.0f64;
            for (v, dt_ms) in steps {
                now += Duration::from_millis(dt_ms);
                let mut r = blank();
                i.add(v, now, &mut r);
                if let Some(w) = r.watts {
                    prop_assert!((0.0..=MAX_PLAUSIBLE_WATTS).contains(&w), "{w}");
                }
                if let Some(e) = r.energy_joules {
                    prop_assert!(e >= last_energy);
                    prop_assert!(e - last_energy <= MAX_PLAUSIBLE_WATTS * dt_ms as f64 / 1e3 + 1e-6);
                    last_energy = e;
                }
                prop_assert!(r.watts.is_none() || r.error.is_none());
            }
        }
    }

    #[test]
    fn a_counter_that_could_not_be_opened_or_read_is_opened_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("energy_uj");
        let mut c = ReopeningCounter::open(&p);
        for _ in 0..REOPEN_EVERY {
            let e = c.read_u64().unwrap_err();
            assert_eq!(e, ReadError::NotFound { path: p.clone() });
            assert_eq!(e.to_string(), format!("{} does not exist", p.display()));
        }
        std::fs::write(&p, "7\n").unwrap();
        assert_eq!(c.read_u64(), Ok(7), "opened again after REOPEN_EVERY failures");

        // A directory where the file should be opens, but cannot be read;
        // once it is a file again, a reopen reads it.
        let q = d.path().join("energy1_input");
        std::fs::create_dir(&q).unwrap();
        let mut c = ReopeningCounter::open(&q);
        for _ in 0..REOPEN_EVERY {
            let e = c.read_u64().unwrap_err();
            assert!(matches!(e, ReadError::Io { .. }), "{e:?}");
            assert_eq!(e.path(), q);
        }
        std::fs::remove_dir(&q).unwrap();
        std::fs::write(&q, "9\n").unwrap();
        assert_eq!(c.read_u64(), Ok(9));
        assert_eq!(c.read_u64(), Ok(9));
    }

    #[test]
    fn sources_that_found_nothing_are_looked_for_again() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Sources::discover(t.path());
        let t0 = std::time::Instant::now();
        let local = |r: &[Reading]| r.iter().filter(|r| r.source != "nvml").count();
        assert_eq!(local(&s.sample(t0)), 0);
        let z = t.path().join("class/powercap/intel-rapl:0");
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("name"), "package-0\n").unwrap();
        std::fs::write(z.join("energy_uj"), "1000\n").unwrap();
        let h = t.path().join("class/hwmon/hwmon0");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("power1_input"), "5000000\n").unwrap();
        assert_eq!(
            local(&s.sample(t0 + REDISCOVER_EVERY / 2)),
            0,
            "not looked for yet"
        );
        let r = s.sample(t0 + REDISCOVER_EVERY * 2);
        let rapl = r.iter().find(|r| r.source == "rapl").expect("RAPL found");
        assert_eq!(
            (rapl.watts, rapl.error.as_deref()),
            (None, None),
            "no watts from a first sample"
        );
        let hw = r.iter().find(|r| r.source == "hwmon").expect("hwmon found");
        assert_eq!(hw.watts, Some(5.0));
        std::fs::write(z.join("energy_uj"), "2001000\n").unwrap();
        let r = s.sample(t0 + REDISCOVER_EVERY * 2 + Duration::from_secs(1));
        assert_eq!(r.iter().find(|r| r.source == "rapl").unwrap().watts, Some(2.0));
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
        let e = c.read_u64().unwrap_err();
        assert_eq!(
            e,
            ReadError::NotANumber {
                path: p.clone(),
                text: "x".into()
            }
        );
        assert_eq!(
            e.to_string(),
            format!("{}: \"x\" is not a number", p.display()),
            "the path once"
        );
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            ReadError::io(&p, &e),
            ReadError::PermissionDenied { path: p.clone() }
        );
        assert!(why(&p, &e).contains("root-only"));
    }
}

/// Energy from a counter that runs since its device started (NVML's, a
/// BMC's `EnergykWh`): the sum of the increases between readings, so a
/// counter that starts over (a driver reload, a GPU or BMC reset) loses
/// only the interval it went back in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergySince {
    last_mj: Option<u64>,
    total_mj: u64,
}

impl EnergySince {
    /// Fold in the counter's value `mj`; returns the joules counted so far.
    /// A value below the last one is a reset: it adds nothing and is the
    /// new baseline.
    pub fn add(&mut self, mj: u64) -> f64 {
        if let Some(prev) = self.last_mj
            && mj >= prev
        {
            self.total_mj = self.total_mj.saturating_add(mj - prev);
        }
        self.last_mj = Some(mj);
        self.total_mj as f64 / 1e3
    }
}
