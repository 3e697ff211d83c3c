//! One simulated DPU: its rshim settings, boot log, boot state machine and faults.
//!
//! All state sits behind one mutex; the FUSE thread holds it only briefly
//! (never across a delay), and boot sequences run on their own threads,
//! waiting on the condvar so a reset or shutdown stops them at once.

pub mod bfcfg;
mod boot;
pub mod log;
mod misc;
pub mod stream;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::config::{Fault, SimConfig, Stage, Timings};
use log::{Console, Level, LogRing, Module, msg};
pub use misc::MiscError;
use stream::{Progress, StreamReport};

/// Where the DPU is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The OS on eMMC is running.
    Up,
    /// Not running (blank eMMC, or a boot that found nothing).
    Down,
    /// `boot` was opened: the chip is being reset.
    Resetting,
    /// Receiving the boot stream.
    Receiving,
    /// Reset with `BOOT_MODE 0`: BL2 waits for a boot stream.
    AwaitingStream,
    /// Firmware stages (BL31, UEFI).
    Booting,
    /// The installer runs.
    Installing,
    /// Rebooting after an install.
    Rebooting,
    /// Did not boot: bad stream, bad bf.cfg, failed install without an old OS, panic.
    Failed,
    /// `hang:<stage>` fault: the log stopped.
    Hung,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Up => "up",
            Phase::Down => "down",
            Phase::Resetting => "resetting",
            Phase::Receiving => "receiving",
            Phase::AwaitingStream => "awaiting-stream",
            Phase::Booting => "booting",
            Phase::Installing => "installing",
            Phase::Rebooting => "rebooting",
            Phase::Failed => "failed",
            Phase::Hung => "hung",
        })
    }
}

/// Where the DPU last booted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootSource {
    Emmc,
    Rshim,
}

/// A snapshot of one DPU, for tests and the `.control` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpuState {
    pub index: usize,
    /// `rshim<N>`
    pub name: String,
    /// `pcie-0000:<bus>:00.2`
    pub dev_name: String,
    pub serial: String,
    pub phase: Phase,
    /// The OS is up (`phase == Phase::Up`).
    pub up: bool,
    pub boot_source: BootSource,
    /// Version of the OS on eMMC (from the version-info image of the last
    /// successful install, or the preinstalled one); `None`: blank.
    pub installed_version: Option<String>,
    /// Successful installs.
    pub install_count: u64,
    /// Times the OS came up.
    pub boot_count: u64,
    /// Boot streams pushed (opens of `boot` that reset the DPU).
    pub push_count: u64,
    /// Bytes received by the last (or current) push.
    pub last_push_bytes: u64,
    /// `boot` is open for writing.
    pub boot_open: bool,
    pub fault: Fault,
    /// Why the last boot or install failed.
    pub last_error: Option<String>,
    /// What hostplane's `bfb_modify_os` in the bf.cfg of the last install
    /// wrote on the DPU OS (decoded); `None`: that bf.cfg had none (or no install yet).
    pub dpu_os: Option<bfcfg::DpuOsReport>,
}

/// rshim's per-device settings, shown and changed through `misc`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub display_level: u8,
    pub boot_mode: u8,
    pub boot_timeout: u32,
    pub usb_timeout: u32,
    pub drop_mode: bool,
    pub clear_on_read: bool,
    pub boot_reset_skip: bool,
    pub force_cmd: bool,
    pub peer_mac: [u8; 6],
    pub pxe_id: u32,
    pub vlan: [u32; 2],
}

impl Settings {
    fn new(index: usize) -> Settings {
        Settings {
            display_level: 0,
            boot_mode: 1,
            boot_timeout: 300,
            usb_timeout: 40,
            drop_mode: false,
            clear_on_read: false,
            boot_reset_skip: false,
            force_cmd: false,
            peer_mac: [0x00, 0x1a, 0xca, 0xff, 0xff, index as u8],
            pxe_id: 0,
            vlan: [0, 0],
        }
    }
}

pub(crate) struct Inner {
    pub settings: Settings,
    pub log: LogRing,
    console: Console,
    history: VecDeque<String>,
    pub fault: Fault,
    /// Bumped by every reset; a boot sequence of an older generation stops.
    pub epoch: u64,
    pub phase: Phase,
    pub boot_source: BootSource,
    /// The file handle holding `boot` open for writing.
    pub boot_writer: Option<u64>,
    pub os_version: Option<String>,
    pub install_count: u64,
    pub boot_count: u64,
    pub push_count: u64,
    pub last_push_bytes: u64,
    pub last_error: Option<String>,
    pub dpu_os: Option<bfcfg::DpuOsReport>,
    pub reset_at: Instant,
    /// False once the simulator shuts down.
    pub alive: bool,
}

impl Inner {
    /// Append one line to the chip log, the console and the history.
    pub fn log_line(&mut self, rshim: &str, line: String) {
        tracing::debug!(rshim, line = line.trim_start(), "dpu log");
        self.console.push_line(line.trim_start());
        if self.history.len() == log::HISTORY_LINES {
            self.history.pop_front();
        }
        self.history.push_back(line.clone());
        self.log.push(line);
    }

    /// A line on the console only (not in the chip log).
    pub fn console_line(&mut self, line: &str) {
        self.console.push_line(line);
    }

    pub fn reset(&mut self) -> u64 {
        self.epoch += 1;
        self.reset_at = Instant::now();
        self.epoch
    }

    fn hangs_at(&self, stage: Stage) -> bool {
        self.fault == Fault::Hang(stage)
    }
}

/// Why `boot` cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootOpenError {
    #[error("{rshim}: boot is already open by another writer")]
    InUse { rshim: String },
    #[error("{rshim}: device is owned by another agent (BMC)")]
    OwnedElsewhere { rshim: String },
    #[error("{rshim}: device is in drop mode")]
    DropMode { rshim: String },
}

impl BootOpenError {
    pub fn errno(&self) -> i32 {
        match self {
            BootOpenError::InUse { .. } | BootOpenError::OwnedElsewhere { .. } => libc::EBUSY,
            BootOpenError::DropMode { .. } => libc::EINVAL,
        }
    }
}

/// What an accepted open of `boot` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOpen {
    /// Generation of this push (compare at close).
    pub epoch: u64,
    /// The DPU was reset: the open returns after `Timings::reset`.
    pub reset: bool,
}

/// How a simulated DPU's rshim reaches the host, which is what `DEV_NAME`
/// in `misc` says (as NVIDIA's rshim driver names its backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Attach {
    /// PCIe: `pcie-0000:<04 + index>:00.2`.
    #[default]
    Pcie,
    /// USB: `usb-1-1.<index + 1>` (bus 1, port 1, then port index + 1, in
    /// the driver's hex), the device sysfs names `1-1.<index + 1>`.
    Usb,
}

impl std::str::FromStr for Attach {
    type Err = String;

    fn from_str(s: &str) -> Result<Attach, String> {
        match s {
            "pcie" => Ok(Attach::Pcie),
            "usb" => Ok(Attach::Usb),
            other => Err(format!("{other:?}: expected pcie or usb")),
        }
    }
}

/// The `DEV_NAME` of DPU `index` attached as `attach`.
pub fn dev_name(index: usize, attach: Attach) -> String {
    match attach {
        Attach::Pcie => format!("pcie-0000:{:02x}:00.2", 0x04 + index),
        Attach::Usb => format!("usb-1-1.{:x}", index + 1),
    }
}

pub struct Dpu {
    pub index: usize,
    pub name: String,
    pub dev_name: String,
    pub serial: String,
    pub timings: Timings,
    serial_in_misc: bool,
    /// Unplugged: the device is gone from the host (see [`Dpu::unplug`]).
    removed: AtomicBool,
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl Dpu {
    /// A DPU on PCIe.
    pub fn new(index: usize, cfg: &SimConfig) -> Dpu {
        Dpu::attached(index, cfg, Attach::Pcie)
    }

    /// A DPU whose rshim is attached as `attach`.
    pub fn attached(index: usize, cfg: &SimConfig, attach: Attach) -> Dpu {
        let up = cfg.preinstalled.is_some();
        Dpu {
            index,
            name: format!("rshim{index}"),
            dev_name: dev_name(index, attach),
            removed: AtomicBool::new(false),
            serial: format!("MT2342XSIM{index:02}"),
            timings: cfg.timings,
            serial_in_misc: cfg.serial_in_misc,
            inner: Mutex::new(Inner {
                settings: Settings::new(index),
                log: LogRing::default(),
                console: Console::default(),
                history: VecDeque::new(),
                fault: cfg.faults.get(&index).copied().unwrap_or_default(),
                epoch: 0,
                phase: if up { Phase::Up } else { Phase::Down },
                boot_source: BootSource::Emmc,
                boot_writer: None,
                os_version: cfg.preinstalled.clone(),
                install_count: 0,
                boot_count: u64::from(up),
                push_count: 0,
                last_push_bytes: 0,
                last_error: None,
                dpu_os: None,
                reset_at: Instant::now(),
                alive: true,
            }),
            cond: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> DpuState {
        let g = self.lock();
        DpuState {
            index: self.index,
            name: self.name.clone(),
            dev_name: self.dev_name.clone(),
            serial: self.serial.clone(),
            phase: g.phase,
            up: g.phase == Phase::Up,
            boot_source: g.boot_source,
            installed_version: g.os_version.clone(),
            install_count: g.install_count,
            boot_count: g.boot_count,
            push_count: g.push_count,
            last_push_bytes: g.last_push_bytes,
            boot_open: g.boot_writer.is_some(),
            fault: g.fault,
            last_error: g.last_error.clone(),
            dpu_os: g.dpu_os.clone(),
        }
    }

    pub fn fault(&self) -> Fault {
        self.lock().fault
    }

    /// `BOOT_TIMEOUT` (misc): how long a boot write may make no progress
    /// before the driver fails it with ETIMEDOUT.
    pub fn boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.lock().settings.boot_timeout))
    }

    pub fn set_fault(&self, fault: Fault) {
        tracing::info!(rshim = %self.name, %fault, "fault set");
        self.lock().fault = fault;
        self.cond.notify_all();
    }

    /// Every log line since the simulator started (up to `log::HISTORY_LINES`), never drained.
    pub fn history(&self) -> Vec<String> {
        self.lock().history.iter().cloned().collect()
    }

    pub fn console_snapshot(&self) -> Vec<u8> {
        self.lock().console.snapshot()
    }

    /// Build the text a reader of `misc` sees (and drain the log with CLEAR_ON_READ).
    pub fn misc_snapshot(&self) -> Vec<u8> {
        let mut g = self.lock();
        misc::render(self, &mut g, self.serial_in_misc).into_bytes()
    }

    /// One `KEY VALUE` command written to `misc`.
    pub fn misc_write(self: &Arc<Self>, text: &[u8]) -> Result<(), MiscError> {
        let reset = {
            let mut g = self.lock();
            misc::apply(&self.name, &mut g, text)?
        };
        if reset {
            self.sw_reset();
        }
        Ok(())
    }

    /// `SW_RESET 1`: the DPU reboots from eMMC (or waits for a stream with `BOOT_MODE 0`).
    pub fn sw_reset(self: &Arc<Self>) {
        let (epoch, steps) = {
            let mut g = self.lock();
            let epoch = g.reset();
            g.phase = Phase::Booting;
            g.boot_source = BootSource::Emmc;
            g.last_error = None;
            let steps = boot::reset_plan(&self.timings, g.settings.boot_mode, g.os_version.is_some());
            (epoch, steps)
        };
        tracing::info!(rshim = %self.name, epoch, "SW_RESET");
        self.cond.notify_all();
        boot::spawn(Arc::clone(self), epoch, steps);
    }

    /// Open `boot` for writing, as file handle `fh`.
    pub fn open_boot(&self, fh: u64) -> Result<BootOpen, BootOpenError> {
        let mut g = self.lock();
        if g.fault == Fault::Busy {
            return Err(BootOpenError::OwnedElsewhere {
                rshim: self.name.clone(),
            });
        }
        if g.settings.drop_mode {
            return Err(BootOpenError::DropMode {
                rshim: self.name.clone(),
            });
        }
        if g.boot_writer.is_some() {
            return Err(BootOpenError::InUse {
                rshim: self.name.clone(),
            });
        }
        g.boot_writer = Some(fh);
        g.last_push_bytes = 0;
        if g.settings.boot_reset_skip {
            return Ok(BootOpen {
                epoch: g.epoch,
                reset: false,
            });
        }
        let epoch = g.reset();
        g.push_count += 1;
        g.phase = Phase::Resetting;
        g.boot_source = BootSource::Rshim;
        g.settings.boot_mode = 0;
        g.last_error = None;
        drop(g);
        self.cond.notify_all();
        tracing::info!(rshim = %self.name, epoch, "boot opened: DPU reset into rshim boot mode");
        Ok(BootOpen { epoch, reset: true })
    }

    /// The reset delay of an open has passed: the chip waits for the stream.
    pub fn reset_done(&self, epoch: u64) {
        let mut g = self.lock();
        if g.epoch == epoch && g.phase == Phase::Resetting {
            g.phase = Phase::Receiving;
        }
    }

    /// Bytes of a push were taken; log what the boot ROM saw.
    pub fn boot_progress(&self, epoch: u64, bytes: u64, progress: &Progress) {
        let mut g = self.lock();
        g.last_push_bytes = bytes;
        if g.epoch != epoch {
            return;
        }
        if progress.first_image && g.phase != Phase::Hung {
            if g.hangs_at(Stage::Bl1) {
                g.phase = Phase::Hung;
            } else {
                g.log_line(&self.name, msg(Level::Info, Module::Psc, "PSC BL1 START"));
                if g.hangs_at(Stage::Bl2) {
                    g.phase = Phase::Hung;
                } else {
                    g.log_line(&self.name, msg(Level::Info, Module::Bl2, "start"));
                    g.log_line(&self.name, msg(Level::Info, Module::Bl2, "boot mode (rshim)"));
                }
            }
        }
        if let Some(why) = &progress.failure {
            tracing::warn!(rshim = %self.name, error = %why, "boot stream rejected");
            g.log_line(&self.name, msg(Level::Err, Module::Bl2, why));
            g.last_error = Some(why.clone());
            g.phase = Phase::Failed;
        }
    }

    /// `boot` closed: end of stream. Runs the boot sequence in the background.
    pub fn close_boot(self: &Arc<Self>, fh: u64, open: BootOpen, end: Result<Option<StreamReport>, String>) {
        let mut g = self.lock();
        if g.boot_writer == Some(fh) {
            g.boot_writer = None;
        }
        if open.reset {
            g.settings.boot_mode = 1;
        }
        if g.epoch != open.epoch || !g.alive {
            return;
        }
        let report = match end {
            Ok(Some(report)) => report,
            // Already reported while the stream came in.
            Ok(None) => return,
            Err(why) => {
                tracing::warn!(rshim = %self.name, error = %why, "boot stream incomplete");
                g.log_line(&self.name, msg(Level::Err, Module::Bl2, &why));
                g.last_error = Some(why);
                g.phase = Phase::Failed;
                return;
            }
        };
        g.last_push_bytes = report.bytes;
        if g.phase == Phase::Hung {
            return;
        }
        tracing::info!(
            rshim = %self.name,
            bytes = report.bytes,
            images = report.images,
            version = report.version.as_deref().unwrap_or("-"),
            bf_cfg_bytes = report.bf_cfg_len,
            "boot stream complete"
        );
        let steps = if !open.reset {
            boot::runtime_upgrade_plan(&self.timings)
        } else if report.installer {
            boot::install_plan(&self.timings, &report)
        } else {
            boot::firmware_plan(&self.timings, g.os_version.is_some())
        };
        // A new sequence for this push (the reset happened at open).
        g.epoch += 1;
        let epoch = g.epoch;
        drop(g);
        self.cond.notify_all();
        boot::spawn(Arc::clone(self), epoch, steps);
    }

    /// The DPU is unplugged (a USB cable pulled, the PCIe function gone):
    /// its boot sequences stop, and the filesystem answers ENODEV to writes
    /// on `boot` handles still open (as the driver does for a gone device).
    pub fn unplug(&self) {
        self.removed.store(true, Ordering::SeqCst);
        tracing::info!(rshim = %self.name, dev_name = %self.dev_name, "DPU unplugged");
        self.shutdown();
    }

    /// True once [`Dpu::unplug`] was called.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Stop all boot sequences (the simulator is going away).
    pub fn shutdown(&self) {
        self.lock().alive = false;
        self.cond.notify_all();
    }
}
