//! Simulators for hostplane.
//!
//! [`mount`] serves simulated BlueField DPUs behind the same files as the
//! real rshim driver — `<root>/rshim<N>/{boot,misc,console}` — through FUSE,
//! so the agent drives them exactly as it drives `/dev/rshim<N>/` on a real
//! host (see `docs/simulator.md` and `docs/rshim.md`). [`mkbfb`] writes
//! test boot streams. [`bmc`] serves simulated Redfish BMCs that model the
//! power of NVIDIA DGX/GB200 systems (async, on tokio).
//!
//! ```no_run
//! use hostplane_sim::{Fault, SimConfig, Stage};
//! let sim = hostplane_sim::mount("/tmp/rshim".as_ref(), SimConfig::default())?;
//! sim.set_fault(1, Fault::Hang(Stage::Installer));
//! std::fs::write(sim.rshim_dir(0).join("misc"), "DISPLAY_LEVEL 2")?;
//! println!("{:?}", sim.state(0).phase);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bmc;
pub mod cli;
pub mod config;
pub mod dpu;
mod fs;
pub mod mkbfb;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{Fault, SimConfig, Stage, Timings};
pub use dpu::{Attach, BootSource, DpuState, Phase};
pub use mkbfb::{MkbfbReport, mkbfb};

use dpu::Dpu;
use fs::slots::Slots;
use fuser::MountOption;

/// The device every FUSE mount needs.
pub const FUSE_DEVICE: &str = "/dev/fuse";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid {field}: {message}")]
    Config { field: &'static str, message: String },
    #[error(
        "FUSE is not available: {path} is missing (load the fuse module, or give the container the device)"
    )]
    NoFuse { path: PathBuf },
    #[error("creating mount point {path}: {source}")]
    CreateRoot { path: PathBuf, source: std::io::Error },
    #[error("mounting the rshim simulator at {path}: {source}")]
    Mount { path: PathBuf, source: std::io::Error },
    #[error("writing test BFB {path}: {source}")]
    WriteBfb { path: PathBuf, source: std::io::Error },
    #[error("waiting for a shutdown signal: {source}")]
    Signal { source: nix::Error },
    #[error(transparent)]
    Bmc(#[from] bmc::BmcError),
    #[error("starting the async runtime: {source}")]
    Runtime { source: std::io::Error },
    #[error("waiting for a shutdown signal: {source}")]
    AsyncSignal { source: std::io::Error },
}

impl SimError {
    /// A usage or configuration error (exit code 64), not a runtime failure.
    pub fn is_usage(&self) -> bool {
        match self {
            SimError::Config { .. } => true,
            SimError::Bmc(e) => e.is_usage(),
            _ => false,
        }
    }

    /// FUSE cannot be used on this machine; tests skip rather than fail.
    pub fn is_fuse_unavailable(&self) -> bool {
        matches!(self, SimError::NoFuse { .. })
    }
}

/// A mounted simulator. Dropping it stops the DPUs and unmounts.
pub struct SimHandle {
    root: PathBuf,
    /// The DPUs by index; DPUs may be added and removed at run time.
    dpus: Arc<Slots>,
    session: Option<fuser::BackgroundSession>,
}

/// Mount `cfg.dpus` simulated DPUs at `root` (created if missing).
///
/// As root the mount is `allow_other` and `auto_unmount` (through
/// `fusermount3`), so other users can reach it and a crashed process leaves
/// no stale mount; otherwise it is private to the calling user.
pub fn mount(root: &Path, cfg: SimConfig) -> Result<SimHandle, SimError> {
    cfg.validate()?;
    if !Path::new(FUSE_DEVICE).exists() {
        return Err(SimError::NoFuse {
            path: FUSE_DEVICE.into(),
        });
    }
    std::fs::create_dir_all(root).map_err(|source| SimError::CreateRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let root = root.canonicalize().map_err(|source| SimError::CreateRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let dpus = Arc::new(Slots::new(&cfg));
    let mount_err = |source| SimError::Mount {
        path: root.clone(),
        source,
    };
    let mut options = vec![
        MountOption::FSName("hostplane-sim".to_string()),
        MountOption::Subtype("rshim".to_string()),
        MountOption::NoExec,
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    let is_root = nix::unistd::geteuid().is_root();
    let session = if is_root {
        let mut with_auto = options.clone();
        with_auto.extend([MountOption::AllowOther, MountOption::AutoUnmount]);
        let fs = fs::SimFs::new(dpus.clone(), &root.display().to_string()).map_err(mount_err)?;
        match fuser::spawn_mount2(fs, &root, &with_auto) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "auto_unmount mount failed; mounting without it");
                options.push(MountOption::AllowOther);
                let fs = fs::SimFs::new(dpus.clone(), &root.display().to_string()).map_err(mount_err)?;
                fuser::spawn_mount2(fs, &root, &options).map_err(mount_err)?
            }
        }
    } else {
        let fs = fs::SimFs::new(dpus.clone(), &root.display().to_string()).map_err(mount_err)?;
        fuser::spawn_mount2(fs, &root, &options).map_err(mount_err)?
    };
    dpus.set_notifier(session.notifier());
    tracing::info!(root = %root.display(), dpus = cfg.dpus, "rshim simulator mounted");
    Ok(SimHandle {
        root,
        dpus,
        session: Some(session),
    })
}

impl SimHandle {
    /// The mount point (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/rshim<dpu>`
    pub fn rshim_dir(&self, dpu: usize) -> PathBuf {
        self.root.join(format!("rshim{dpu}"))
    }

    /// Number of simulated DPUs plugged in.
    pub fn dpus(&self) -> usize {
        self.dpus.present().len()
    }

    fn dpu(&self, dpu: usize) -> Arc<Dpu> {
        self.dpus
            .get(dpu)
            .unwrap_or_else(|| panic!("no DPU rshim{dpu} is plugged in"))
    }

    /// Set (or clear, with [`Fault::None`]) the fault of a DPU. Panics if
    /// no DPU `dpu` is plugged in.
    pub fn set_fault(&self, dpu: usize, fault: Fault) {
        self.dpu(dpu).set_fault(fault);
    }

    /// Panics if no DPU `dpu` is plugged in.
    pub fn state(&self, dpu: usize) -> DpuState {
        self.dpu(dpu).state()
    }

    /// Every DPU plugged in, by index.
    pub fn states(&self) -> Vec<DpuState> {
        self.dpus.present().iter().map(|d| d.state()).collect()
    }

    /// Every log line the DPU printed since the mount (not drained by reads
    /// of `misc`). Panics if no DPU `dpu` is plugged in.
    pub fn history(&self, dpu: usize) -> Vec<String> {
        self.dpu(dpu).history()
    }

    /// Reset the DPU as `SW_RESET 1` does. Panics if no DPU `dpu` is plugged in.
    pub fn reset(&self, dpu: usize) {
        self.dpu(dpu).sw_reset();
    }

    /// Hot-plug: a new DPU appears at a never-used `rshim<N>` (else the
    /// lowest freed one, as the rshim driver picks; its directory shows up
    /// under the mount at once); returns N. `attach`
    /// picks what its `DEV_NAME` says (PCIe or USB).
    pub fn add_dpu(&self, attach: Attach) -> Result<usize, SimError> {
        Ok(self.dpus.add(attach, None)?.index)
    }

    /// Hot-plug: DPU `dpu` goes away. Its directory disappears (the kernel
    /// is told before this returns), opening its files fails, a push still
    /// writing to its `boot` gets ENODEV, and its boot sequence stops.
    pub fn remove_dpu(&self, dpu: usize) -> Result<(), SimError> {
        let (_, told) = self.dpus.remove(dpu, fs::dir_ino(dpu))?;
        if let Some(t) = told {
            let _ = t.join();
        }
        Ok(())
    }

    /// Stop the DPUs and unmount (as dropping does).
    pub fn unmount(self) {}
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        for d in self.dpus.present() {
            d.shutdown();
        }
        let Some(session) = self.session.take() else {
            return;
        };
        // fusermount3's auto_unmount only unmounts a dead filesystem, and ours
        // is still serving: detach it ourselves first. The session thread then
        // ends when the kernel lets go of the connection.
        detach(&self.root);
        drop(session);
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.root) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_mounted(&self.root) {
            tracing::warn!(root = %self.root.display(), "simulator still mounted after unmount");
        } else {
            tracing::info!(root = %self.root.display(), "rshim simulator unmounted");
        }
    }
}

/// Lazily unmount `root`: umount2(MNT_DETACH) as root, else `fusermount3 -u -z`.
fn detach(root: &Path) {
    use nix::mount::{MntFlags, umount2};
    let err = match umount2(root, MntFlags::MNT_DETACH) {
        Ok(()) => return,
        Err(e) => e,
    };
    for bin in ["fusermount3", "fusermount"] {
        let out = std::process::Command::new(bin)
            .args(["-u", "-z", "--"])
            .arg(root)
            .stdin(std::process::Stdio::null())
            .output();
        if out.is_ok_and(|o| o.status.success()) {
            return;
        }
    }
    tracing::warn!(root = %root.display(), error = %err, "cannot unmount the simulator");
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], octal) {
            out.push(
                d.iter()
                    .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/odd\\x"), "/odd\\x");
    }

    #[test]
    fn invalid_config_is_a_usage_error() {
        let cfg = SimConfig {
            dpus: 0,
            ..SimConfig::default()
        };
        let err = mount(Path::new("/nonexistent/never-created"), cfg)
            .err()
            .expect("0 DPUs is invalid");
        assert!(err.is_usage(), "{err}");
        assert!(!Path::new("/nonexistent/never-created").exists());
    }
}
