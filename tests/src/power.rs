//! A fake sysfs power tree, shaped like a two-socket server's: RAPL (two
//! packages, each with core, uncore and dram subzones, plus psys) and hwmon
//! (a PSU power sensor, an energy meter and two averaged sensors). Used by the
//! power end-to-end test and the agent cost bench.
use std::path::{Path, PathBuf};

use anyhow::Result;

/// Build the tree under `root` (use it as `power.sysfs_root`); returns every
/// file a sampler reads each period (the energy and power files).
pub fn fake_sysfs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut read_each_period = Vec::new();
    let rapl = root.join("class/powercap");
    let zone = |dev: &str, name: &str, energy: u64, limit_w: u64, out: &mut Vec<PathBuf>| -> Result<()> {
        let z = rapl.join(dev);
        std::fs::create_dir_all(&z)?;
        std::fs::write(z.join("name"), format!("{name}\n"))?;
        std::fs::write(z.join("energy_uj"), format!("{energy}\n"))?;
        std::fs::write(z.join("max_energy_range_uj"), "262143328850\n")?;
        std::fs::write(
            z.join("constraint_0_power_limit_uw"),
            format!("{}\n", limit_w * 1_000_000),
        )?;
        std::fs::write(
            z.join("constraint_0_max_power_uw"),
            format!("{}\n", limit_w * 1_000_000),
        )?;
        out.push(z.join("energy_uj"));
        Ok(())
    };
    for p in 0..2u64 {
        zone(
            &format!("intel-rapl:{p}"),
            &format!("package-{p}"),
            1_000_000 * (p + 1),
            350,
            &mut read_each_period,
        )?;
        zone(
            &format!("intel-rapl:{p}:0"),
            "core",
            500_000,
            0,
            &mut read_each_period,
        )?;
        zone(
            &format!("intel-rapl:{p}:1"),
            "uncore",
            100_000,
            0,
            &mut read_each_period,
        )?;
        zone(
            &format!("intel-rapl:{p}:2"),
            "dram",
            200_000,
            60,
            &mut read_each_period,
        )?;
    }
    zone("intel-rapl:2", "psys", 9_000_000, 1200, &mut read_each_period)?;
    let hwmon = root.join("class/hwmon");
    let chip = |n: u32, name: &str, files: &[(&str, &str)], out: &mut Vec<PathBuf>| -> Result<()> {
        let h = hwmon.join(format!("hwmon{n}"));
        std::fs::create_dir_all(&h)?;
        std::fs::write(h.join("name"), format!("{name}\n"))?;
        for (f, v) in files {
            std::fs::write(h.join(f), format!("{v}\n"))?;
            out.push(h.join(f));
        }
        Ok(())
    };
    chip(
        0,
        "acpi_power_meter",
        &[("power1_average", "412000000")],
        &mut read_each_period,
    )?;
    chip(
        1,
        "psu",
        &[("power1_input", "430000000"), ("power2_input", "12000000")],
        &mut read_each_period,
    )?;
    chip(
        2,
        "energy_meter",
        &[("energy1_input", "123456789")],
        &mut read_each_period,
    )?;
    Ok(read_each_period)
}
