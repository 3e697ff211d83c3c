//! hwmon sensors: `power*_input` / `power*_average` (µW, measured) and
//! `energy*_input` (µJ, integrated like RAPL) under `<sysfs>/class/hwmon/hwmon*/`.
//! Energy counters do not say where they wrap: one that goes back was reset
//! (no watts for that sample). A sensor that cannot be read is opened again
//! every [`REOPEN_EVERY`](super::REOPEN_EVERY) samples.
use std::path::Path;
use std::time::Instant;

use super::{Integrator, Method, Reading, ReopeningCounter, Scope};

enum Kind {
    Power,
    Energy { energy: Integrator },
}

struct Sensor {
    device: String,
    kind: Kind,
    counter: ReopeningCounter,
}

pub struct Hwmon {
    sensors: Vec<Sensor>,
}

impl Hwmon {
    pub fn discover(sysfs_root: &Path) -> Hwmon {
        let dir = sysfs_root.join("class/hwmon");
        let mut sensors = Vec::new();
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Hwmon { sensors };
        };
        let mut hwmons: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        hwmons.sort();
        for h in hwmons {
            let chip = std::fs::read_to_string(h.join("name"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let base = h.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(&h) else {
                continue;
            };
            let mut names: Vec<String> = files
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for f in names {
                let kind = if f.starts_with("power") && (f.ends_with("_input") || f.ends_with("_average")) {
                    Kind::Power
                } else if f.starts_with("energy") && f.ends_with("_input") {
                    Kind::Energy {
                        energy: Integrator::new(None),
                    }
                } else {
                    continue;
                };
                let path = h.join(&f);
                let label = if chip.is_empty() {
                    base.clone()
                } else {
                    format!("{base}:{chip}")
                };
                sensors.push(Sensor {
                    device: format!("{label}/{f}"),
                    kind,
                    counter: ReopeningCounter::open(&path),
                });
            }
        }
        Hwmon { sensors }
    }

    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
    }

    /// How many sensors were found.
    pub fn len(&self) -> usize {
        self.sensors.len()
    }

    pub fn sample(&mut self) -> Vec<Reading> {
        let now = Instant::now();
        self.sensors
            .iter_mut()
            .map(|s| {
                let value = s.counter.read_u64();
                let mut r = Reading {
                    source: "hwmon",
                    scope: Scope::Other,
                    device: s.device.clone(),
                    watts: None,
                    energy_joules: None,
                    method: Method::Measured,
                    window: None,
                    age: None,
                    error: None,
                };
                match (&mut s.kind, value) {
                    (Kind::Energy { energy }, Err(e)) => {
                        energy.reset();
                        r.method = Method::Integrated;
                        r.error = Some(e.to_string());
                    }
                    (_, Err(e)) => r.error = Some(e.to_string()),
                    (Kind::Power, Ok(uw)) => r.watts = Some(uw as f64 / 1e6),
                    (Kind::Energy { energy }, Ok(cur)) => {
                        r.method = Method::Integrated;
                        energy.add(cur, now, &mut r);
                    }
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

    #[test]
    fn power_and_energy_files_are_found_and_read() {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("class/hwmon/hwmon3");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("name"), "acpi_power_meter\n").unwrap();
        std::fs::write(h.join("power1_average"), "345000000\n").unwrap();
        std::fs::write(h.join("power1_average_interval"), "1000\n").unwrap();
        std::fs::write(h.join("energy1_input"), "5000000\n").unwrap();
        std::fs::write(h.join("temp1_input"), "42000\n").unwrap();
        let mut hw = Hwmon::discover(t.path());
        let r = hw.sample();
        let names: Vec<&str> = r.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(
            names,
            [
                "hwmon3:acpi_power_meter/energy1_input",
                "hwmon3:acpi_power_meter/power1_average"
            ]
        );
        assert_eq!(r[1].watts, Some(345.0));
        assert_eq!(r[1].method, Method::Measured);
        assert_eq!(r[0].watts, None, "the first energy sample gives no watts");
        std::fs::write(h.join("energy1_input"), "6000000\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = hw.sample();
        assert!(
            r[0].watts.unwrap() > 0.0 && r[0].energy_joules == Some(1.0),
            "{:?}",
            r[0]
        );
    }

    #[test]
    fn a_sensor_unreadable_at_start_comes_back_and_a_reset_is_no_wattage() {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("class/hwmon/hwmon1");
        std::fs::create_dir_all(&h).unwrap();
        // A directory where the counter should be: found, opened, unreadable.
        std::fs::create_dir(h.join("energy1_input")).unwrap();
        let mut hw = Hwmon::discover(t.path());
        for _ in 0..crate::power::REOPEN_EVERY {
            let r = hw.sample();
            assert!(r[0].watts.is_none() && r[0].error.is_some(), "{r:?}");
        }
        std::fs::remove_dir(h.join("energy1_input")).unwrap();
        std::fs::write(h.join("energy1_input"), "90000000000\n").unwrap();
        let r = hw.sample();
        assert_eq!((r[0].watts, r[0].error.as_deref()), (None, None), "{r:?}");
        std::fs::write(h.join("energy1_input"), "90002000000\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = hw.sample();
        assert_eq!(r[0].energy_joules, Some(2.0), "{r:?}");
        // The counter starts over (a driver reload): no 1.8e13 W, no energy.
        std::fs::write(h.join("energy1_input"), "1000\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = hw.sample();
        assert!(
            r[0].watts.is_none() && r[0].error.as_deref().unwrap().contains("reset"),
            "{r:?}"
        );
        std::fs::write(h.join("energy1_input"), "1001000\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let r = hw.sample();
        assert_eq!(
            r[0].energy_joules,
            Some(3.0),
            "counting on from the new value: {r:?}"
        );
    }
}
