//! The flash engine: verify a BFB, push it with its bf.cfg into an rshim
//! device's `boot`, and follow the DPU's log on `misc` to a verdict.
//!
//! Order of a flash (see `docs/rshim.md`):
//! 1. refuse at once if this agent already flashes that rshim, or if another
//!    process holds its flash lock (`<run_dir>/dev-rshim0.flash.lock`, see
//!    [`lock`]): one flash per rshim across the daemon and every CLI;
//! 2. fetch the image through the cache (normally a hit after `prepare`),
//!    verify its structure again, render bf.cfg — a bad image or bf.cfg is
//!    an error before the device is touched (so the DPU is never reset);
//! 3. read `misc` (refuse a device in drop mode as busy), set
//!    `BOOT_TIMEOUT` to the push stall timeout (so the driver itself fails a
//!    boot write that makes no progress, and no write can hold the process
//!    longer), `CLEAR_ON_READ 1` + `DISPLAY_LEVEL 2`, and drain stale log lines;
//! 4. open `boot` (EBUSY / drop mode / locked = busy, never retried); once it
//!    is open (the DPU is reset) drain the log once more, then push image +
//!    bf.cfg on two threads (writes of at most 256 KiB) while polling `misc`;
//! 5. drive the [`Verdict`] state machine, one timeout per stage, until
//!    installed, failed (the DPU's own line, or a reset of the DPU during
//!    the installation) or timed out; restore the `misc` values it changed
//!    (`BOOT_TIMEOUT`, `CLEAR_ON_READ`, `DISPLAY_LEVEL`) to what they were,
//!    whatever the outcome, cancellation included.
//!
//! The agent config's `flash:` section is [`FlashSettings`] (defined and
//! checked in `config.rs`).

pub mod cli;
mod config;
mod lock;
mod push;
mod run;
mod verdict;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hostplane_proto::v1::{BfbRef, FlashProgress, RshimInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bfb_cache::{BfbCache, CacheError};
use crate::bfcfg::{BfCfg, BfCfgError};
use crate::rshim::{MiscDevice, MiscFile, RshimError, RshimPaths};

pub use config::FlashSettings;
pub use verdict::{Stage, Step, Verdict};

/// The flash lock file of the device directory `device` (e.g. `/dev/rshim0`
/// → `<run_dir>/dev-rshim0.flash.lock`); see `docs/rshim.md`.
pub fn lock_file(run_dir: &std::path::Path, device: &std::path::Path) -> PathBuf {
    lock::FlashLock::path(run_dir, device)
}

/// Timeouts, one per stage. The push has a stall timeout (no byte accepted
/// for that long); the others count from entering the stage, and not before
/// the push has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageTimeouts {
    #[serde(with = "humantime_serde")]
    pub push_stall: Duration,
    /// After the push, until the DPU's first log line.
    #[serde(with = "humantime_serde")]
    pub boot: Duration,
    /// From the first boot line until the installer starts.
    #[serde(with = "humantime_serde")]
    pub installer: Duration,
    /// From the installer's start until it reports completion.
    #[serde(with = "humantime_serde")]
    pub install: Duration,
    /// From completion until `Linux up` / `DPU is ready`.
    #[serde(with = "humantime_serde")]
    pub linux_up: Duration,
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts {
            push_stall: Duration::from_secs(300),
            boot: Duration::from_secs(300),
            installer: Duration::from_secs(900),
            install: Duration::from_secs(3600),
            linux_up: Duration::from_secs(1200),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlashConfig {
    /// Where `rshim<N>/` directories live (`/dev` on a real host).
    pub dev_root: PathBuf,
    /// Where the per-rshim flash locks live (`<run_dir>/dev-rshim0.flash.lock`
    /// for `/dev/rshim0`), shared by the daemon and every CLI flash on the host.
    pub run_dir: PathBuf,
    /// Bytes per read of the image.
    pub push_chunk: usize,
    /// The most bytes one `write(2)` to `boot` carries (256 KiB): it bounds
    /// how long one write can sit in the kernel, and how often the stall
    /// timer sees progress. Not a config key; the flash bench varies it.
    pub push_write_max: usize,
    pub stage_timeouts: StageTimeouts,
    /// How often `misc` is read while following the log.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Least time between two byte-progress reports.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
}

impl Default for FlashConfig {
    fn default() -> Self {
        FlashConfig {
            dev_root: PathBuf::from("/dev"),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            push_chunk: 1 << 20,
            push_write_max: push::MAX_WRITE,
            stage_timeouts: StageTimeouts::default(),
            poll_interval: Duration::from_secs(1),
            progress_interval: Duration::from_millis(250),
        }
    }
}

/// The default [`FlashConfig::run_dir`].
pub const DEFAULT_RUN_DIR: &str = "/run/hostplane";

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// A Bfb resource: fetched through the cache (sha256 + structure verified).
    Ref(BfbRef),
    /// A local file (CLI without `--sha256`): structure verified only.
    LocalFile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct FlashRequest {
    /// `rshim<N>`.
    pub rshim: String,
    pub image: ImageSource,
    pub bf_cfg: BfCfg,
}

/// A verified installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlashReport {
    pub bytes_pushed: u64,
    pub elapsed: Duration,
    /// The DPU's log lines seen during the flash, in order.
    pub log: Vec<String>,
    /// The line that decided success (`Linux up` / `DPU is ready`).
    pub verdict_line: String,
}

/// Why a flash failed. Every variant names the rshim (or the image) and
/// [`FlashError::stage`] says where it stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("invalid rshim name {name:?}: expected rshim<N>")]
    InvalidRshim { name: String },
    /// Another flash of this rshim runs (in this process or another one:
    /// the reason names the holder), or the device is held by another owner
    /// (EBUSY, drop mode, BMC). Never retried here.
    #[error("{rshim}: busy: {reason}")]
    Busy { rshim: String, reason: String },
    /// The flash lock could not be taken for another reason than a holder.
    #[error("{rshim}: flash lock {path}: {source}")]
    Lock {
        rshim: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{rshim}: no such device: {path}")]
    NoDevice { rshim: String, path: PathBuf },
    #[error("{source}")]
    Download { source: CacheError },
    /// The image is not a valid BFB (names image index, id and offset).
    #[error("{rshim}: image {path} refused before touching the device: {source}")]
    Verify {
        rshim: String,
        path: PathBuf,
        source: hostplane_bfb::Error,
    },
    #[error("{rshim}: reading image {path}: {source}")]
    Image {
        rshim: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{rshim}: bf.cfg refused before touching the device: {source}")]
    BfCfg { rshim: String, source: BfCfgError },
    #[error("{source}")]
    Device { source: RshimError },
    #[error("{rshim}: push to {path} failed after {pushed} bytes: {source}")]
    Push {
        rshim: String,
        path: PathBuf,
        pushed: u64,
        source: std::io::Error,
    },
    /// The DPU's own failure line (ERR, ASSERT, Exception, PANIC, CRITICAL ERROR).
    #[error("{rshim}: the DPU reported a failure in stage {stage}: {line}")]
    DpuFailed {
        rshim: String,
        stage: Stage,
        line: String,
    },
    /// The DPU booted again (BL1/BL2/BL31 start) while the installer ran:
    /// someone else reset or reflashed it.
    #[error("{rshim}: the DPU was reset during stage {stage} (another flash, a BMC or a SW_RESET?): {line}")]
    UnexpectedReset {
        rshim: String,
        stage: Stage,
        line: String,
    },
    /// `Linux up` without a completed installation: the old OS booted.
    #[error(
        "{rshim}: the DPU booted Linux but the installation never completed (last stage {stage}): {line}"
    )]
    NotInstalled {
        rshim: String,
        stage: Stage,
        line: String,
    },
    /// `stage` is the stage that was waited for.
    #[error("{rshim}: timed out in stage {stage} after {} waiting for {waiting_for}", humantime_serde::re::humantime::format_duration(*.after))]
    Timeout {
        rshim: String,
        stage: Stage,
        after: Duration,
        waiting_for: &'static str,
    },
    #[error("{rshim}: flash cancelled in stage {stage} after {pushed} bytes pushed")]
    Cancelled {
        rshim: String,
        stage: Stage,
        pushed: u64,
    },
    /// The device went away mid-flash: its `<dev_root>/rshim<N>` directory
    /// is gone (a USB rshim unplugged, the DPU's PCIe function removed, the
    /// rshim driver stopped). Reported at once, not after a stage timeout.
    #[error(
        "{rshim} disappeared during {} (device removed): {path} is gone, {pushed} bytes pushed",
        during(*.stage)
    )]
    Removed {
        rshim: String,
        stage: Stage,
        pushed: u64,
        path: PathBuf,
    },
}

/// "the push", "stage boot", ...
fn during(stage: Stage) -> String {
    match stage {
        Stage::Push => "the push".to_string(),
        s => format!("stage {s}"),
    }
}

impl FlashError {
    /// The stage the flash stopped in.
    pub fn stage(&self) -> Stage {
        match self {
            FlashError::InvalidRshim { .. }
            | FlashError::Busy { .. }
            | FlashError::NoDevice { .. }
            | FlashError::Lock { .. }
            | FlashError::Device { .. } => Stage::Device,
            FlashError::Download { .. }
            | FlashError::Verify { .. }
            | FlashError::Image { .. }
            | FlashError::BfCfg { .. } => Stage::Prepare,
            FlashError::Push { .. } => Stage::Push,
            FlashError::DpuFailed { stage, .. }
            | FlashError::NotInstalled { stage, .. }
            | FlashError::UnexpectedReset { stage, .. }
            | FlashError::Timeout { stage, .. }
            | FlashError::Cancelled { stage, .. }
            | FlashError::Removed { stage, .. } => *stage,
        }
    }

    /// True when the device (or this agent) was busy: the caller may try
    /// later, but this flash did nothing to the DPU.
    pub fn is_busy(&self) -> bool {
        matches!(self, FlashError::Busy { .. })
    }
}

/// How the flasher reaches a device's `misc`. Production: [`MiscFile`] on
/// the real path; tests may pass a fake.
pub type MiscOpener = Arc<dyn Fn(&RshimPaths) -> Arc<dyn MiscDevice> + Send + Sync>;

struct Inner {
    cfg: FlashConfig,
    cache: Arc<BfbCache>,
    misc: MiscOpener,
    /// rshim -> what it looked like when its flash started.
    busy: Mutex<HashMap<String, Option<RshimInfo>>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<RshimInfo>>> {
        self.busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The flash engine; cheap to clone. One flash per rshim at a time; flashes
/// of different rshims run in parallel.
#[derive(Clone)]
pub struct Flasher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Flasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flasher").field("cfg", &self.inner.cfg).finish()
    }
}

/// This agent's claim on one rshim, with the host-wide flash lock; both are
/// released on drop (after the push threads have closed `boot`).
struct Slot {
    _lock: lock::FlashLock,
    _claim: Claim,
}

/// The entry of one rshim in this agent's map; removed on drop.
struct Claim {
    inner: Arc<Inner>,
    rshim: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.inner.lock().remove(&self.rshim);
    }
}

impl Flasher {
    pub fn new(cfg: FlashConfig, cache: Arc<BfbCache>) -> Flasher {
        let misc: MiscOpener = Arc::new(|p: &RshimPaths| {
            Arc::new(MiscFile {
                rshim: p.name.clone(),
                path: p.misc.clone(),
            }) as Arc<dyn MiscDevice>
        });
        Flasher::with_misc_opener(cfg, cache, misc)
    }

    pub fn with_misc_opener(cfg: FlashConfig, cache: Arc<BfbCache>, misc: MiscOpener) -> Flasher {
        Flasher {
            inner: Arc::new(Inner {
                cfg,
                cache,
                misc,
                busy: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &FlashConfig {
        &self.inner.cfg
    }

    pub fn cache(&self) -> &Arc<BfbCache> {
        &self.inner.cache
    }

    /// True while a flash of `rshim` runs in this agent.
    pub fn is_flashing(&self, rshim: &str) -> bool {
        self.inner.lock().contains_key(rshim)
    }

    /// Download (or find in cache) and verify: sha256 + every BFB
    /// header/length/CRC. Returns the local verified path.
    pub async fn prepare(&self, bfb: &BfbRef, cancel: &CancellationToken) -> Result<PathBuf, FlashError> {
        let cached = self
            .inner
            .cache
            .fetch(bfb, cancel)
            .await
            .map_err(|source| FlashError::Download { source })?;
        Ok(cached.path.clone())
    }

    /// Flash: prepare (normally a cache hit), verify the image structure
    /// again, render bf.cfg, push BFB + bf.cfg into `<dev_root>/<rshim>/boot`,
    /// follow the DPU log on `misc` to a verdict. Progress (stage changes,
    /// new log lines, bytes pushed at most every `progress_interval`) goes to
    /// `progress` without ever blocking the flash.
    pub async fn flash(
        &self,
        req: FlashRequest,
        progress: mpsc::Sender<FlashProgress>,
        cancel: CancellationToken,
    ) -> Result<FlashReport, FlashError> {
        self.flash_with_log(req, progress, None, cancel).await
    }

    /// [`Flasher::flash`], also sending every DPU log line to `lines` (for
    /// the CLI, which prints them all).
    pub async fn flash_with_log(
        &self,
        req: FlashRequest,
        progress: mpsc::Sender<FlashProgress>,
        lines: Option<mpsc::Sender<String>>,
        cancel: CancellationToken,
    ) -> Result<FlashReport, FlashError> {
        self.flash_with_rootfs(req, None, progress, lines, cancel).await
    }

    /// [`Flasher::flash_with_log`], also pushing the file `rootfs` raw after
    /// bf.cfg (bfb-install's `--rootfs`).
    pub async fn flash_with_rootfs(
        &self,
        req: FlashRequest,
        rootfs: Option<PathBuf>,
        progress: mpsc::Sender<FlashProgress>,
        lines: Option<mpsc::Sender<String>>,
        cancel: CancellationToken,
    ) -> Result<FlashReport, FlashError> {
        let rshim = req.rshim.clone();
        let res = run::flash(self, req, rootfs, run::Reporter::new(progress, lines), cancel).await;
        match &res {
            Ok(r) => {
                tracing::info!(rshim = %rshim, bytes = r.bytes_pushed, elapsed = ?r.elapsed, "flash succeeded")
            }
            Err(e) => tracing::warn!(rshim = %rshim, stage = %e.stage(), error = %e, "flash failed"),
        }
        res
    }

    /// rshim devices under the dev root. Devices being flashed are not read
    /// (their log must have one reader): they are reported as they were when
    /// the flash started; those another process is flashing (its flash lock is
    /// held) by name only, with the holder in `error`.
    pub async fn discover(&self) -> Vec<RshimInfo> {
        let mut skip: HashMap<String, RshimInfo> = self
            .inner
            .lock()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.clone().unwrap_or_else(|| RshimInfo {
                        name: k.clone(),
                        ..Default::default()
                    }),
                )
            })
            .collect();
        let (dev_root, run_dir) = (self.inner.cfg.dev_root.clone(), self.inner.cfg.run_dir.clone());
        let mine: Vec<String> = skip.keys().cloned().collect();
        let elsewhere = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dev_root) else {
                return Vec::new();
            };
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| crate::rshim::is_rshim_name(n) && !mine.contains(n))
                .filter_map(|n| lock::holder(&run_dir, &dev_root.join(&n)).map(|h| (n, h)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (name, holder) in elsewhere {
            let error = format!("not read: another process is flashing it ({holder})");
            skip.insert(
                name.clone(),
                RshimInfo {
                    name,
                    error,
                    ..Default::default()
                },
            );
        }
        crate::rshim::discover_except(&self.inner.cfg.dev_root, skip).await
    }

    /// Claim `rshim` in this agent, then take its host-wide flash lock
    /// (`what` says what is being flashed, for whoever is refused next).
    async fn claim(&self, rshim: &str, what: String) -> Result<Slot, FlashError> {
        let claim = {
            let mut busy = self.inner.lock();
            if busy.contains_key(rshim) {
                return Err(FlashError::Busy {
                    rshim: rshim.to_string(),
                    reason: "another flash of this rshim is running in this agent".into(),
                });
            }
            busy.insert(rshim.to_string(), None);
            Claim {
                inner: self.inner.clone(),
                rshim: rshim.to_string(),
            }
        };
        let run_dir = self.inner.cfg.run_dir.clone();
        let device = self.inner.cfg.dev_root.join(rshim);
        let res =
            tokio::task::spawn_blocking(move || lock::FlashLock::acquire(&run_dir, &device, &what)).await;
        let lock = match res {
            Ok(Ok(l)) => l,
            Ok(Err(lock::LockError::Held { path, holder })) => {
                return Err(FlashError::Busy {
                    rshim: rshim.to_string(),
                    reason: if holder.is_empty() {
                        format!(
                            "another process holds {} (it has not said what it flashes yet)",
                            path.display()
                        )
                    } else {
                        format!("another flash holds {}: {holder}", path.display())
                    },
                });
            }
            Ok(Err(lock::LockError::Io { path, source })) => {
                return Err(FlashError::Lock {
                    rshim: rshim.to_string(),
                    path,
                    source,
                });
            }
            Err(e) => {
                return Err(FlashError::Lock {
                    rshim: rshim.to_string(),
                    path: lock::FlashLock::path(
                        &self.inner.cfg.run_dir,
                        &self.inner.cfg.dev_root.join(rshim),
                    ),
                    source: std::io::Error::other(format!("lock task failed: {e}")),
                });
            }
        };
        Ok(Slot {
            _lock: lock,
            _claim: claim,
        })
    }

    fn remember(&self, rshim: &str, info: RshimInfo) {
        if let Some(slot) = self.inner.lock().get_mut(rshim) {
            *slot = Some(info);
        }
    }
}

#[cfg(test)]
mod tests;
