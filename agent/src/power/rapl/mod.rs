//! The RAPL facet, through powercap sysfs. Reading (here): every zone and
//! subzone under `<sysfs>/class/powercap/intel-rapl:*` (and `amd-rapl` where
//! present), energy counters integrated into watts, wraparound handled with
//! the zone's own `max_energy_range_uj`. The first sample of a zone (or the
//! first after it could not be read) yields energy but no watts, never a
//! wild number. A zone whose counter cannot be opened or read is opened
//! again every [`REOPEN_EVERY`](super::REOPEN_EVERY) samples. Limiting
//! ([`limit`]): the package, dram and psys zones' long-term constraint.
mod limit;

use std::path::Path;
use std::time::Instant;

use super::{Integrator, Method, Reading, ReopeningCounter, Scope, why};
pub use limit::RaplLimiter;

struct Zone {
    device: String,
    scope: Scope,
    counter: ReopeningCounter,
    energy: Integrator,
}

pub struct Rapl {
    zones: Vec<Zone>,
    /// Why there is no RAPL at all (no powercap tree: a VM, an old kernel, not Intel/AMD).
    pub absent: Option<String>,
}

fn scope_of(name: &str) -> Scope {
    match name {
        n if n.starts_with("package") => Scope::Package,
        "psys" => Scope::Psys,
        "dram" => Scope::Dram,
        "core" => Scope::Core,
        "uncore" => Scope::Uncore,
        _ => Scope::Other,
    }
}

impl Rapl {
    pub fn discover(sysfs_root: &Path) -> Rapl {
        let dir = sysfs_root.join("class/powercap");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => {
                return Rapl {
                    zones: Vec::new(),
                    absent: Some(why(&dir, &e)),
                };
            }
        };
        names.retain(|n| (n.starts_with("intel-rapl:") || n.starts_with("amd-rapl:")) && !n.contains("mmio"));
        names.sort();
        let zones: Vec<Zone> = names
            .into_iter()
            .map(|device| {
                let z = dir.join(&device);
                let name = std::fs::read_to_string(z.join("name")).unwrap_or_default();
                // Unknown (unreadable): a counter that goes back is then a reset.
                let max_range = std::fs::read_to_string(z.join("max_energy_range_uj"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                let counter = ReopeningCounter::open(&z.join("energy_uj"));
                Zone {
                    device,
                    scope: scope_of(name.trim()),
                    counter,
                    energy: Integrator::new(max_range),
                }
            })
            .collect();
        let absent = zones
            .is_empty()
            .then(|| format!("no RAPL zones under {}", dir.display()));
        Rapl { zones, absent }
    }

    /// No zone was found.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// How many zones were found.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn sample(&mut self, now: Instant) -> Vec<Reading> {
        self.zones
            .iter_mut()
            .map(|z| {
                let mut r = Reading {
                    source: "rapl",
                    scope: z.scope,
                    device: z.device.clone(),
                    watts: None,
                    energy_joules: None,
                    method: Method::Integrated,
                    window: None,
                    age: None,
                    error: None,
                };
                match z.counter.read_u64() {
                    Err(e) => {
                        // Start over after an error: the next good read is a first sample again.
                        z.energy.reset();
                        r.error = Some(e.to_string());
                    }
                    Ok(cur) => z.energy.add(cur, now, &mut r),
                }
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn zone(root: &Path, dev: &str, name: &str, max: u64, energy: u64) {
        let z = root.join("class/powercap").join(dev);
        std::fs::create_dir_all(&z).unwrap();
        std::fs::write(z.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(z.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
        std::fs::write(z.join("energy_uj"), format!("{energy}\n")).unwrap();
    }

    fn set(root: &Path, dev: &str, energy: u64) {
        std::fs::write(
            root.join("class/powercap").join(dev).join("energy_uj"),
            format!("{energy}\n"),
        )
        .unwrap();
    }

    #[test]
    fn zones_integrate_to_watts_across_a_wrap() {
        let t = tempfile::tempdir().unwrap();
        zone(
            t.path(),
            "intel-rapl:0",
            "package-0",
            262_143_328_850,
            262_143_000_000,
        );
        zone(t.path(), "intel-rapl:0:0", "dram", 65_712_999_613, 1_000_000);
        zone(t.path(), "intel-rapl-mmio:0", "package-0", 1000, 0);
        let mut rapl = Rapl::discover(t.path());
        assert!(rapl.absent.is_none());
        let t0 = Instant::now();
        let first = rapl.sample(t0);
        assert_eq!(
            first.len(),
            2,
            "the mmio duplicate of the package zone is left out"
        );
        assert!(
            first.iter().all(|r| r.watts.is_none() && r.error.is_none()),
            "no watts from one sample: {first:?}"
        );
        assert_eq!((first[0].scope, first[1].scope), (Scope::Package, Scope::Dram));

        // One second later the package counter wrapped: 328_850 to the top, +1, then 150_671_150.
        set(t.path(), "intel-rapl:0", 150_671_150);
        set(t.path(), "intel-rapl:0:0", 21_000_000);
        let second = rapl.sample(t0 + Duration::from_secs(1));
        let pkg = second[0].watts.unwrap();
        assert!((pkg - 151.0).abs() < 1e-6, "{pkg}");
        assert!((second[1].watts.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(second[0].window, Some(Duration::from_secs(1)));
        assert!((second[0].energy_joules.unwrap() - 151.0).abs() < 1e-6);
    }

    #[test]
    fn unreadable_and_absent_say_why() {
        let t = tempfile::tempdir().unwrap();
        let none = Rapl::discover(t.path());
        assert!(
            none.absent.as_deref().unwrap().contains("class/powercap"),
            "{:?}",
            none.absent
        );

        zone(t.path(), "intel-rapl:1", "psys", 1000, 10);
        let mut rapl = Rapl::discover(t.path());
        std::fs::write(t.path().join("class/powercap/intel-rapl:1/energy_uj"), "garbage").unwrap();
        let r = rapl.sample(Instant::now());
        assert!(
            r[0].watts.is_none() && r[0].error.as_deref().unwrap().contains("not a number"),
            "{r:?}"
        );
        // After the error, the next good read is a first sample again: no jump.
        set(t.path(), "intel-rapl:1", 20);
        assert!(rapl.sample(Instant::now()).iter().all(|r| r.watts.is_none()));
    }

    #[test]
    fn a_zone_unreadable_at_start_is_opened_again_later_without_a_wild_first_wattage() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:0", "package-0", 262_143_328_850, 0);
        let e = t.path().join("class/powercap/intel-rapl:0/energy_uj");
        std::fs::remove_file(&e).unwrap();
        let mut rapl = Rapl::discover(t.path());
        let t0 = Instant::now();
        let at = |n: u32| t0 + Duration::from_secs(u64::from(n));
        for n in 0..crate::power::REOPEN_EVERY {
            let r = rapl.sample(at(n));
            assert!(r[0].error.as_deref().unwrap().contains("does not exist"), "{r:?}");
        }
        // The driver came up with the counter far along.
        std::fs::write(&e, "200000000000\n").unwrap();
        let n = crate::power::REOPEN_EVERY;
        let r = rapl.sample(at(n));
        assert_eq!((r[0].watts, r[0].error.as_deref()), (None, None), "{r:?}");
        set(t.path(), "intel-rapl:0", 200_000_150_000);
        let r = rapl.sample(at(n + 1));
        assert_eq!(r[0].watts, Some(0.15), "{r:?}");
    }

    #[test]
    fn without_a_readable_range_a_counter_that_goes_back_was_reset() {
        let t = tempfile::tempdir().unwrap();
        zone(t.path(), "intel-rapl:0", "package-0", 0, 9_000_000);
        std::fs::remove_file(t.path().join("class/powercap/intel-rapl:0/max_energy_range_uj")).unwrap();
        let mut rapl = Rapl::discover(t.path());
        let t0 = Instant::now();
        rapl.sample(t0);
        set(t.path(), "intel-rapl:0", 10);
        let r = rapl.sample(t0 + Duration::from_secs(1));
        assert_eq!(r[0].watts, None, "not 1.8e13 W: {r:?}");
        assert!(r[0].error.as_deref().unwrap().contains("reset"), "{r:?}");
        set(t.path(), "intel-rapl:0", 50_000_010);
        let r = rapl.sample(t0 + Duration::from_secs(2));
        assert_eq!((r[0].watts, r[0].energy_joules), (Some(50.0), Some(50.0)));
    }
}
