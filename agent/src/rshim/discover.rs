//! Find rshim devices: directories `rshim<N>` under the dev root with `boot`
//! and `misc`. A device that cannot be read is reported with `error` set,
//! never dropped.

use std::collections::HashMap;
use std::path::Path;

use hostplane_proto::v1::RshimInfo;

use super::{MiscDevice, MiscFile, MiscSnapshot, RshimPaths, is_rshim_name, rshim_index};

/// `pcie-0000:04:00.2` -> `0000:04:00.2`; anything else (USB: `usb-1-1`) -> None.
pub fn pci_from_dev_name(dev_name: &str) -> Option<String> {
    let bdf = dev_name.trim().strip_prefix("pcie-")?;
    let (domain_bus_dev, func) = bdf.rsplit_once('.')?;
    let parts: Vec<&str> = domain_bus_dev.split(':').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let ok = match parts.as_slice() {
        [domain, bus, dev] => hex(domain, 4) && hex(bus, 2) && hex(dev, 2),
        _ => false,
    } && hex(func, 1);
    ok.then(|| bdf.to_ascii_lowercase())
}

/// The USB device path of a USB rshim, as sysfs names the device under
/// `/sys/bus/usb/devices/` (`<bus>-<port>.<port>...`), from the `DEV_NAME`
/// the rshim driver shows in `misc`. The driver (rshim-user-space,
/// `rshim_usb.c`) prints `usb-` then the bus number and each port number of
/// the chain in hex, every port after a `-` except the last, after a `.`:
/// bus 1 ports 1,4 is `usb-1-1.4`, bus 3 port 3 is `usb-3.3`; sysfs writes the
/// same chain in decimal as `1-1.4` and `3-3`. None for anything that is not
/// such a name (PCIe rshims: `pcie-...`).
pub fn usb_path_from_dev_name(dev_name: &str) -> Option<String> {
    let rest = dev_name.trim().strip_prefix("usb-")?;
    let mut numbers = Vec::new();
    for part in rest.split(['-', '.']) {
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        numbers.push(u8::from_str_radix(part, 16).ok()?);
    }
    let (bus, ports) = numbers.split_first()?;
    // USB 3 allows at most 7 tiers of ports (libusb_get_port_numbers' buffer is 8).
    if ports.is_empty() || ports.len() > 7 || ports.contains(&0) {
        return None;
    }
    let chain: Vec<String> = ports.iter().map(u8::to_string).collect();
    Some(format!("{bus}-{}", chain.join(".")))
}

/// The host PF of an rshim function: same bus/device, function 0.
pub fn pf_address(rshim_bdf: &str) -> Option<String> {
    let (prefix, _func) = rshim_bdf.rsplit_once('.')?;
    Some(format!("{prefix}.0"))
}

/// Discover rshim devices under `dev_root` (blocking; use [`discover`] from async code).
pub fn discover_blocking(dev_root: &Path) -> Result<Vec<RshimInfo>, std::io::Error> {
    discover_blocking_except(dev_root, &HashMap::new())
}

/// Like [`discover_blocking`], but devices named in `skip` are not read: the
/// given info is reported instead (a device being flashed must have exactly
/// one reader of its `misc` log).
pub fn discover_blocking_except(
    dev_root: &Path,
    skip: &HashMap<String, RshimInfo>,
) -> Result<Vec<RshimInfo>, std::io::Error> {
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dev_root)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if is_rshim_name(&name) && entry.path().is_dir() {
            names.push(name);
        }
    }
    names.sort_by_key(|n| rshim_index(n));
    Ok(names
        .into_iter()
        .map(|name| {
            skip.get(&name)
                .cloned()
                .unwrap_or_else(|| inspect(dev_root, &name))
        })
        .collect())
}

/// Discover rshim devices under `dev_root` without blocking the runtime. A
/// missing dev root means no devices.
pub async fn discover(dev_root: &Path) -> Vec<RshimInfo> {
    discover_except(dev_root, HashMap::new()).await
}

/// [`discover_blocking_except`] without blocking the runtime.
pub async fn discover_except(dev_root: &Path, skip: HashMap<String, RshimInfo>) -> Vec<RshimInfo> {
    let root = dev_root.to_path_buf();
    let res = tokio::task::spawn_blocking(move || discover_blocking_except(&root, &skip)).await;
    match res {
        Ok(Ok(found)) => found,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Ok(Err(e)) => {
            tracing::warn!(dev_root = %dev_root.display(), error = %e, "cannot list rshim devices");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(dev_root = %dev_root.display(), error = %e, "rshim discovery task failed");
            Vec::new()
        }
    }
}

fn inspect(dev_root: &Path, name: &str) -> RshimInfo {
    let mut info = RshimInfo {
        name: name.to_string(),
        ..Default::default()
    };
    let paths = match RshimPaths::new(dev_root, name) {
        Ok(p) => p,
        Err(e) => {
            info.error = e.to_string();
            return info;
        }
    };
    let mut problems = Vec::new();
    if !paths.boot.exists() {
        problems.push(format!("{}: missing", paths.boot.display()));
    }
    let misc = MiscFile {
        rshim: name.to_string(),
        path: paths.misc.clone(),
    };
    match misc.read_text() {
        Ok(text) => {
            let snap = MiscSnapshot::parse(&text);
            info.dev_info = snap.dev_info().unwrap_or_default().to_string();
            // Real rshim has no serial in misc; some builds (and the simulator) show SERIAL_NUM.
            info.serial = snap.get("SERIAL_NUM").unwrap_or_default().to_string();
            match snap.dev_name() {
                Some(dev_name) => {
                    info.pci_address = pci_from_dev_name(dev_name).unwrap_or_default();
                    info.usb_path = usb_path_from_dev_name(dev_name).unwrap_or_default();
                    let unparsed = (dev_name.starts_with("pcie-") && info.pci_address.is_empty())
                        || (dev_name.starts_with("usb-") && info.usb_path.is_empty());
                    if unparsed {
                        problems.push(format!(
                            "{}: unparsable DEV_NAME {dev_name:?}",
                            paths.misc.display()
                        ));
                    }
                }
                None => problems.push(format!("{}: no DEV_NAME", paths.misc.display())),
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    info.error = problems.join("; ");
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_name_table() {
        for (input, want) in [
            ("pcie-0000:04:00.2", Some("0000:04:00.2")),
            ("pcie-0000:A3:00.2", Some("0000:a3:00.2")),
            ("usb-1-1", None),
            ("pcie-04:00.2", None),
            ("pcie-0000:04:00", None),
            ("", None),
        ] {
            assert_eq!(pci_from_dev_name(input).as_deref(), want, "{input}");
        }
        assert_eq!(pf_address("0000:04:00.2").as_deref(), Some("0000:04:00.0"));
    }

    #[test]
    fn usb_dev_name_table() {
        for (input, want) in [
            // The driver's own examples (README, rshim.8, rshim.conf).
            ("usb-3.3", Some("3-3")),
            ("usb-1.1", Some("1-1")),
            ("usb-2-1.7", Some("2-1.7")),
            ("usb-1-1.4", Some("1-1.4")),
            // Three tiers: ports 1, 1, 7 on bus 2.
            ("usb-2-1-1.7", Some("2-1.1.7")),
            // Hex in the driver's name, decimal in sysfs.
            ("usb-a-1.b", Some("10-1.11")),
            ("  usb-1-1.4\n", Some("1-1.4")),
            ("usb-1-1", Some("1-1")),
            ("usb-1", None),
            ("usb-", None),
            ("usb-1-.4", None),
            ("usb-1-0.4", None),
            ("usb-1-1.4x", None),
            ("usb-1-1-1-1-1-1-1.1", Some("1-1.1.1.1.1.1.1")),
            ("usb-1-1-1-1-1-1-1-1.1", None),
            ("pcie-0000:04:00.2", None),
            ("1-1.4", None),
        ] {
            assert_eq!(usb_path_from_dev_name(input).as_deref(), want, "{input:?}");
        }
    }

    proptest::proptest! {
        /// Any chain the driver can print (bus, 1..=7 ports, in its hex
        /// format) comes back as sysfs' decimal name.
        #[test]
        fn usb_dev_names_round_trip(bus in 1u8..=255, ports in proptest::collection::vec(1u8..=255, 1..=7)) {
            let mut name = format!("usb-{bus:x}");
            for (i, p) in ports.iter().enumerate() {
                let sep = if i == ports.len() - 1 { '.' } else { '-' };
                name.push_str(&format!("{sep}{p:x}"));
            }
            let chain: Vec<String> = ports.iter().map(u8::to_string).collect();
            let want = format!("{bus}-{}", chain.join("."));
            proptest::prop_assert_eq!(usb_path_from_dev_name(&name), Some(want));
        }
    }

    fn device(root: &Path, name: &str, misc: Option<&str>, boot: bool) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(text) = misc {
            std::fs::write(dir.join("misc"), text).unwrap();
        }
        if boot {
            std::fs::write(dir.join("boot"), "").unwrap();
        }
    }

    #[tokio::test]
    async fn discovers_sorted_and_reports_broken_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        device(
            r,
            "rshim10",
            Some("DEV_NAME        pcie-0000:c1:00.2\nDEV_INFO        BlueField-3(Rev 1)\n"),
            true,
        );
        device(
            r,
            "rshim2",
            Some(
                "DEV_NAME        pcie-0000:04:00.2\nDEV_INFO        BlueField-2(Rev 1)\nSERIAL_NUM      MT2342X00001\n",
            ),
            true,
        );
        device(r, "rshim3", None, true);
        device(r, "rshim4", Some("DEV_NAME        usb-1-1\n"), false);
        device(
            r,
            "rshim5",
            Some("DEV_NAME        usb-2-1.7\nDEV_INFO        BlueField-3(Rev 1)\n"),
            true,
        );
        device(r, "notrshim", Some("DEV_NAME        pcie-0000:05:00.2\n"), true);
        std::fs::write(r.join("rshim9"), "a file, not a device dir").unwrap();

        let found = discover(r).await;
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["rshim2", "rshim3", "rshim4", "rshim5", "rshim10"]);

        assert_eq!(found[0].pci_address, "0000:04:00.2");
        assert_eq!(found[0].dev_info, "BlueField-2(Rev 1)");
        assert_eq!(found[0].serial, "MT2342X00001");
        assert_eq!(found[0].error, "");
        assert!(
            found[1].error.contains("rshim3") && found[1].error.contains("misc"),
            "{}",
            found[1].error
        );
        assert_eq!(found[2].pci_address, "");
        assert_eq!(found[2].usb_path, "1-1");
        assert!(found[2].error.contains("boot"), "{}", found[2].error);
        // A USB rshim: its USB path, no PCI address, nothing wrong.
        assert_eq!(
            (
                found[3].usb_path.as_str(),
                found[3].pci_address.as_str(),
                found[3].error.as_str()
            ),
            ("2-1.7", "", "")
        );
        assert_eq!(found[4].pci_address, "0000:c1:00.2");
        assert_eq!(found[4].usb_path, "");
    }

    #[tokio::test]
    async fn skipped_devices_are_not_read() {
        let root = tempfile::tempdir().unwrap();
        device(
            root.path(),
            "rshim0",
            Some("DEV_NAME        pcie-0000:04:00.2\n"),
            true,
        );
        device(
            root.path(),
            "rshim1",
            Some("DEV_NAME        pcie-0000:05:00.2\n"),
            true,
        );
        // rshim1's misc is unreadable now; the flasher's remembered info is used.
        std::fs::remove_file(root.path().join("rshim1/misc")).unwrap();
        let known = RshimInfo {
            name: "rshim1".into(),
            pci_address: "0000:05:00.2".into(),
            ..Default::default()
        };
        let found = discover_except(
            root.path(),
            HashMap::from([("rshim1".to_string(), known.clone())]),
        )
        .await;
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].pci_address, "0000:04:00.2");
        assert_eq!(found[1], known);
    }

    #[tokio::test]
    async fn missing_dev_root_is_no_devices() {
        let root = tempfile::tempdir().unwrap();
        assert!(discover(&root.path().join("absent")).await.is_empty());
    }
}
