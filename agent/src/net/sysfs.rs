//! SR-IOV and PCI-to-netdev lookups through sysfs, under a re-rootable root
//! (`/sys` in production, a fixture tree in tests).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::NetError;

#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
    /// How long to wait for VF netdevs after the VF count changed.
    vf_wait: Duration,
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs {
            root: root.into(),
            vf_wait: Duration::from_secs(10),
        }
    }

    pub fn with_vf_wait(self, vf_wait: Duration) -> Sysfs {
        Sysfs { vf_wait, ..self }
    }

    /// Wait (bounded by the VF wait) until each of the first `n` VFs of `pf`
    /// has a netdev, as the driver creates them some time after the count
    /// is written. Blocking: call it off the async runtime.
    pub fn wait_vf_netdevs(&self, pf: &str, n: u32) -> Result<(), NetError> {
        let deadline = Instant::now() + self.vf_wait;
        loop {
            let missing: Vec<u32> = (0..n).filter(|i| self.netdev_of_vf(pf, *i).is_err()).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NetError::VfsMissing {
                    pf: pf.into(),
                    missing,
                    after: self.vf_wait,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The device directory of a PF given by netdev name or `pci:<bdf>`.
    fn pf_dir(&self, pf: &str) -> PathBuf {
        match pf.strip_prefix("pci:") {
            Some(bdf) => self.root.join("bus/pci/devices").join(bdf),
            None => self.root.join("class/net").join(pf).join("device"),
        }
    }

    fn read(path: &Path) -> Result<String, NetError> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|source| NetError::Sysfs {
                path: path.into(),
                op: "read",
                source,
            })
    }

    fn first_netdev(dir: &Path) -> Result<String, NetError> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|source| NetError::Sysfs {
                path: dir.into(),
                op: "list netdevs",
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.into_iter().next().ok_or_else(|| NetError::Sysfs {
            path: dir.into(),
            op: "list netdevs",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no netdev"),
        })
    }

    /// The netdev of PCI function `bdf`.
    pub fn netdev_of_pci(&self, bdf: &str) -> Result<String, NetError> {
        Self::first_netdev(&self.root.join("bus/pci/devices").join(bdf).join("net"))
    }

    /// The host netdev of VF `index` of `pf`.
    pub fn netdev_of_vf(&self, pf: &str, index: u32) -> Result<String, NetError> {
        Self::first_netdev(&self.pf_dir(pf).join(format!("virtfn{index}")).join("net"))
    }

    /// Check, changing nothing, that `pf` exists and can have `n` VFs.
    pub fn check_pf(&self, pf: &str, n: u32) -> Result<(), String> {
        let dir = self.pf_dir(pf);
        if !dir.exists() {
            return Err(format!("PF {pf} not found ({} does not exist)", dir.display()));
        }
        let total_path = dir.join("sriov_totalvfs");
        let total: u32 = Self::read(&total_path)
            .map_err(|e| format!("PF {pf} has no SR-IOV: {e}"))?
            .parse()
            .map_err(|_| format!("{} is not a number", total_path.display()))?;
        if n > total {
            return Err(format!(
                "PF {pf}: {n} VFs requested but sriov_totalvfs is {total}"
            ));
        }
        Ok(())
    }

    /// Make `sriov_numvfs` of `pf` equal `n`, going through 0 when the count
    /// changes (the kernel refuses to change a non-zero count directly).
    /// Returns a description of each write made (or, with `dry_run`, to make).
    pub fn ensure_num_vfs(&self, pf: &str, n: u32, dry_run: bool) -> Result<Vec<String>, NetError> {
        let dir = self.pf_dir(pf);
        let total_path = dir.join("sriov_totalvfs");
        let total: u32 = Self::read(&total_path)?.parse().map_err(|_| NetError::Sysfs {
            path: total_path.clone(),
            op: "parse",
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
        })?;
        if n > total {
            return Err(NetError::TooManyVfs {
                pf: pf.into(),
                wanted: n,
                total,
            });
        }
        let num_path = dir.join("sriov_numvfs");
        let cur: u32 = Self::read(&num_path)?.parse().unwrap_or(0);
        if cur == n {
            return Ok(Vec::new());
        }
        let mut writes = Vec::new();
        let steps: Vec<u32> = if cur != 0 && n != 0 { vec![0, n] } else { vec![n] };
        for v in steps {
            writes.push(format!("write {v} to {}", num_path.display()));
            if !dry_run {
                std::fs::write(&num_path, v.to_string()).map_err(|source| NetError::Sysfs {
                    path: num_path.clone(),
                    op: "write sriov_numvfs",
                    source,
                })?;
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(root: &Path, name: &str, total: u32, cur: u32) {
        let dev = root.join("class/net").join(name).join("device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
        std::fs::write(dev.join("sriov_numvfs"), format!("{cur}\n")).unwrap();
    }

    #[test]
    fn vf_count_changes_go_through_zero_and_respect_the_total() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        pf(t.path(), "ens1f0", 16, 0);
        let num = t.path().join("class/net/ens1f0/device/sriov_numvfs");
        assert_eq!(
            s.ensure_num_vfs("ens1f0", 8, false).unwrap().len(),
            1,
            "0 -> 8 is one write"
        );
        assert_eq!(std::fs::read_to_string(&num).unwrap(), "8");
        assert!(s.ensure_num_vfs("ens1f0", 8, false).unwrap().is_empty(), "no-op");
        let w = s.ensure_num_vfs("ens1f0", 4, false).unwrap();
        assert_eq!(w.len(), 2, "8 -> 4 goes through 0: {w:?}");
        assert!(w[0].starts_with("write 0 to"));
        assert_eq!(std::fs::read_to_string(&num).unwrap(), "4");
        let w = s.ensure_num_vfs("ens1f0", 2, true).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&num).unwrap(),
            "4",
            "dry run writes nothing"
        );
        let e = s.ensure_num_vfs("ens1f0", 17, false).unwrap_err();
        assert!(
            e.to_string().contains("17") && e.to_string().contains("16"),
            "{e}"
        );
        let e = s.ensure_num_vfs("ens9", 1, false).unwrap_err();
        assert!(e.to_string().contains("ens9"), "{e}");
    }

    #[test]
    fn vf_netdevs_are_waited_for_with_a_bound() {
        let t = tempfile::tempdir().unwrap();
        pf(t.path(), "ens1f0", 4, 2);
        let s = Sysfs::new(t.path()).with_vf_wait(Duration::from_secs(5));
        let dev = t.path().join("class/net/ens1f0/device");
        let late = dev.clone();
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            for vf in 0..2 {
                std::fs::create_dir_all(late.join(format!("virtfn{vf}/net/ens1f0v{vf}"))).unwrap();
            }
        });
        s.wait_vf_netdevs("ens1f0", 2)
            .expect("the VFs appear within the wait");
        maker.join().unwrap();

        let short = Sysfs::new(t.path()).with_vf_wait(Duration::from_millis(100));
        let e = short.wait_vf_netdevs("ens1f0", 3).unwrap_err();
        assert!(
            matches!(&e, NetError::VfsMissing { missing, .. } if missing == &[2]),
            "{e}"
        );
        assert!(e.to_string().contains("ens1f0"), "{e}");
    }

    #[test]
    fn pci_and_vf_netdevs_resolve() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        std::fs::create_dir_all(t.path().join("bus/pci/devices/0000:04:00.0/net/ens1f0np0")).unwrap();
        std::fs::create_dir_all(t.path().join("bus/pci/devices/0000:04:00.0/virtfn3/net/ens1f0v3")).unwrap();
        assert_eq!(s.netdev_of_pci("0000:04:00.0").unwrap(), "ens1f0np0");
        assert_eq!(s.netdev_of_vf("pci:0000:04:00.0", 3).unwrap(), "ens1f0v3");
        assert!(s.netdev_of_vf("pci:0000:04:00.0", 4).is_err());
    }
}
