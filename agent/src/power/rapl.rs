//! RAPL through powercap sysfs: every zone and subzone under
//! `<sysfs>/class/powercap/intel-rapl:*` (and `amd-rapl` where present),
//! energy counters integrated into watts, wraparound handled with the zone's
//! own `max_energy_range_uj`. The first sample of a zone (or the first after
//! it could not be read) yields energy but no watts, never a wild number.
use std::path::Path;
use std::time::Instant;

use super::{Counter, Integrator, Method, Reading, Scope, why};

struct Zone {
    device: String,
    scope: Scope,
    counter: Result<Counter, String>,
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
                let max_range = std::fs::read_to_string(z.join("max_energy_range_uj"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                let path = z.join("energy_uj");
                let counter = Counter::open(&path).map_err(|e| why(&path, &e));
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
                let value = match &mut z.counter {
                    Ok(c) => c.read_u64().map_err(|e| why(c.path(), &e)),
                    Err(e) => Err(e.clone()),
                };
                match value {
                    Err(e) => {
                        // Start over after an error: the next good read is a first sample again.
                        z.energy.reset();
                        r.error = Some(e);
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
}
