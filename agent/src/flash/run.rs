//! One flash, start to verdict. See the module docs of `flash`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hostplane_proto::v1::{FlashProgress, RshimInfo};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::push::{PushFailure, PushHandle, PushJob};
use super::verdict::{Stage, Step, Verdict};
use super::watch::LogFollower;
use super::{FlashError, FlashReport, FlashRequest, Flasher, ImageSource};
use crate::bfb_cache::CacheError;
use crate::rshim::{
    MiscClient, MiscSnapshot, RshimError, RshimPaths, describe_errno, pci_from_dev_name,
    usb_path_from_dev_name,
};

/// Consecutive failed `misc` reads tolerated while following the log.
const MAX_MISC_ERRORS: u32 = 5;
/// How long a cancelled flash waits for the writer thread to close `boot`.
const CANCEL_GRACE: Duration = Duration::from_secs(10);
/// How long a flash whose device disappeared waits for the writer thread.
const REMOVED_GRACE: Duration = Duration::from_secs(1);
/// How long a DPU failure line seen during the push waits for the push's
/// own result (a failed push is the cause of the DPU's complaint).
const PUSH_RESULT_GRACE: Duration = Duration::from_secs(1);
/// When the device took our `BOOT_TIMEOUT`, the driver fails a stalled write
/// itself; the agent's own stall timer then waits this much longer, as a
/// backstop, so that the driver's ETIMEDOUT is what gets reported.
const STALL_BACKSTOP: Duration = Duration::from_secs(5);

/// Sends progress without ever blocking the flash (a slow consumer misses
/// intermediate reports, not the flash).
pub(crate) struct Reporter {
    tx: mpsc::Sender<FlashProgress>,
    lines: Option<mpsc::Sender<String>>,
    cur: FlashProgress,
}

impl Reporter {
    pub fn new(tx: mpsc::Sender<FlashProgress>, lines: Option<mpsc::Sender<String>>) -> Reporter {
        Reporter {
            tx,
            lines,
            cur: FlashProgress::default(),
        }
    }

    fn send(&self) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(self.cur.clone()) {
            tracing::trace!("progress consumer is slow; report dropped");
        }
    }

    fn stage(&mut self, stage: Stage) {
        self.cur.stage = stage.as_str().to_string();
        self.send();
    }

    fn bytes(&mut self, pushed: u64, total: u64, rate: f64) {
        self.cur.bytes_pushed = pushed;
        self.cur.bytes_total = total;
        self.cur.rate_bytes_per_sec = rate;
        self.send();
    }

    /// New log lines: every line to `lines`, one progress report per batch.
    fn log(&mut self, batch: &[String]) {
        if let Some(tx) = &self.lines {
            for l in batch {
                let _ = tx.try_send(l.clone());
            }
        }
        if let Some(last) = batch.last() {
            self.cur.last_log_line = last.clone();
            self.send();
        }
    }
}

pub(crate) async fn flash(
    flasher: &Flasher,
    req: FlashRequest,
    rootfs: Option<PathBuf>,
    mut rep: Reporter,
    cancel: CancellationToken,
) -> Result<FlashReport, FlashError> {
    let started = Instant::now();
    let rshim = req.rshim.clone();
    let cfg = flasher.config().clone();
    let paths = RshimPaths::new(&cfg.dev_root, &rshim)
        .map_err(|_| FlashError::InvalidRshim { name: rshim.clone() })?;
    let slot = Arc::new(flasher.claim(&rshim, describe(&req.image)).await?);
    let cancelled = |stage, pushed| FlashError::Cancelled {
        rshim: rshim.clone(),
        stage,
        pushed,
    };

    // 1. The image, verified, and bf.cfg — before anything touches the device.
    rep.stage(Stage::Prepare);
    let (image, _lease) = match &req.image {
        ImageSource::Ref(bfb) => match flasher.cache().fetch(bfb, &cancel).await {
            Ok(c) => (c.path.clone(), Some(c)),
            Err(CacheError::Cancelled { .. }) => return Err(cancelled(Stage::Prepare, 0)),
            Err(source) => return Err(FlashError::Download { source }),
        },
        ImageSource::LocalFile(p) => (p.clone(), None),
    };
    let summary = verify_image(&rshim, &image).await?;
    let bf_cfg = req.bf_cfg.render().map_err(|source| FlashError::BfCfg {
        rshim: rshim.clone(),
        source,
    })?;
    if let Some(b) = &bf_cfg {
        tracing::debug!(rshim = %rshim, bf_cfg = %b.redacted(), "bf.cfg rendered");
    }
    let image_len = summary.bfb_bytes;
    let rootfs = match rootfs {
        Some(p) => match tokio::fs::metadata(&p).await {
            Ok(m) => Some((p, m.len())),
            Err(source) => {
                return Err(FlashError::Image {
                    rshim,
                    path: p,
                    source,
                });
            }
        },
        None => None,
    };
    if cancel.is_cancelled() {
        return Err(cancelled(Stage::Prepare, 0));
    }

    // 2. The device: present, not in drop mode, log set up.
    rep.stage(Stage::Device);
    if tokio::fs::symlink_metadata(&paths.boot).await.is_err() {
        return Err(FlashError::NoDevice {
            rshim,
            path: paths.boot,
        });
    }
    let misc = MiscClient::new((flasher.inner.misc)(&paths));
    let snap = misc.read_snapshot().await.map_err(device_err)?;
    if snap.number("DROP_MODE") == Some(1) {
        return Err(FlashError::Busy {
            rshim,
            reason: "DROP_MODE 1: the device is owned by another host or the BMC".into(),
        });
    }
    flasher.remember(&rshim, info_from(&rshim, &snap));
    let boot_timeout = cfg.stage_timeouts.push_stall.as_secs_f64().ceil().max(1.0) as u64;
    let (mut follower, stale) = LogFollower::start(misc, &snap, Some(boot_timeout))
        .await
        .map_err(device_err)?;
    if !stale.is_empty() {
        tracing::debug!(rshim = %rshim, lines = stale.len(), "drained stale DPU log lines");
    }

    // 3. Push and follow.
    let job = PushJob {
        image: image.clone(),
        image_len,
        trailer: bf_cfg.map(|b| b.as_bytes().to_vec()),
        rootfs,
        boot: paths.boot.clone(),
        chunk: cfg.push_chunk,
        max_write: cfg.push_write_max,
        rshim: rshim.clone(),
    };
    // The writer thread holds the slot too: it stays claimed until both this
    // flash has returned and `boot` is closed.
    let res = match job.start(slot.clone()) {
        Ok(push) => {
            let mut f = Follow {
                flasher,
                rshim: &rshim,
                boot: &paths.boot,
                dir: &paths.dir,
                verdict: Verdict::new(summary.is_installer()),
                log: Vec::new(),
                rep: &mut rep,
                boot_timeout: follower.boot_timeout_set.then_some(boot_timeout),
            };
            f.run(push, &mut follower, &cancel).await
        }
        Err(source) => Err(FlashError::Image {
            rshim: rshim.clone(),
            path: image,
            source,
        }),
    };
    follower.finish().await;
    drop(slot);
    res.map(|(bytes_pushed, log, verdict_line)| FlashReport {
        bytes_pushed,
        elapsed: started.elapsed(),
        log,
        verdict_line,
    })
}

/// What a flash pushes, for the lock file (a URL without its credentials).
fn describe(image: &ImageSource) -> String {
    match image {
        ImageSource::Ref(bfb) => crate::bfb_cache::redact_url(&bfb.url),
        ImageSource::LocalFile(p) => p.display().to_string(),
    }
}

async fn verify_image(rshim: &str, image: &Path) -> Result<hostplane_bfb::Summary, FlashError> {
    let p = image.to_path_buf();
    let res = tokio::task::spawn_blocking(move || hostplane_bfb::verify_file(&p)).await;
    match res {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(hostplane_bfb::VerifyFileError::Format { source, .. })) => Err(FlashError::Verify {
            rshim: rshim.to_string(),
            path: image.to_path_buf(),
            source,
        }),
        Ok(Err(hostplane_bfb::VerifyFileError::Io { source, .. })) => Err(FlashError::Image {
            rshim: rshim.to_string(),
            path: image.to_path_buf(),
            source,
        }),
        Err(e) => Err(FlashError::Image {
            rshim: rshim.to_string(),
            path: image.to_path_buf(),
            source: std::io::Error::other(format!("verify task failed: {e}")),
        }),
    }
}

fn device_err(e: RshimError) -> FlashError {
    match e {
        RshimError::NoDevice { rshim, path } => FlashError::NoDevice { rshim, path },
        RshimError::Busy { rshim, reason, .. } => FlashError::Busy { rshim, reason },
        source => FlashError::Device { source },
    }
}

fn info_from(rshim: &str, snap: &MiscSnapshot) -> RshimInfo {
    RshimInfo {
        name: rshim.to_string(),
        pci_address: snap.dev_name().and_then(pci_from_dev_name).unwrap_or_default(),
        usb_path: snap
            .dev_name()
            .and_then(usb_path_from_dev_name)
            .unwrap_or_default(),
        dev_info: snap.dev_info().unwrap_or_default().to_string(),
        serial: snap.get("SERIAL_NUM").unwrap_or_default().to_string(),
        ..Default::default()
    }
}

struct Follow<'a> {
    flasher: &'a Flasher,
    rshim: &'a str,
    boot: &'a Path,
    /// `<dev_root>/rshim<N>`: checked every progress interval, so that a
    /// device removed mid-flash fails the flash at once.
    dir: &'a Path,
    verdict: Verdict,
    log: Vec<String>,
    rep: &'a mut Reporter,
    /// The `BOOT_TIMEOUT` the device took for this flash (seconds).
    boot_timeout: Option<u64>,
}

/// What a batch of log lines decided.
enum Decision {
    Continue,
    Success(String),
    Failure(FlashError),
}

impl Follow<'_> {
    /// Returns (bytes pushed, log, verdict line).
    async fn run(
        &mut self,
        mut push: PushHandle,
        follower: &mut LogFollower,
        cancel: &CancellationToken,
    ) -> Result<(u64, Vec<String>, String), FlashError> {
        // If this future is dropped rather than cancelled, the push stops too.
        let _stop_on_drop = push.stop_on_drop();
        let cfg = self.flasher.config().clone();
        let t = cfg.stage_timeouts;
        let stall_limit = t.push_stall
            + if self.boot_timeout.is_some() {
                STALL_BACKSTOP
            } else {
                Duration::ZERO
            };
        let mut poll = tokio::time::interval(cfg.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(cfg.progress_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut presence = tokio::time::interval(cfg.progress_interval.min(cfg.poll_interval));
        presence.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut opened = push.opened.take();
        let mut pushing = true;
        let mut push_started = Instant::now();
        let mut last_bytes = 0u64;
        let mut last_moved = Instant::now();
        let mut pushed = 0u64;
        let mut push_done_at: Option<Instant> = None;
        let mut stage_entered = Instant::now();
        let mut success: Option<String> = None;
        let mut misc_errors = 0u32;
        loop {
            if let (Some(line), false) = (&success, pushing) {
                return Ok((pushed, std::mem::take(&mut self.log), line.clone()));
            }
            let deadline = push_done_at.map(|d| d.max(stage_entered) + self.verdict.limit(&t).0);
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    push.stop();
                    let pushed = if pushing { wait_closed(&mut push).await } else { pushed };
                    return Err(FlashError::Cancelled { rshim: self.rshim.into(), stage: self.stage(pushing), pushed });
                }
                res = async { opened.as_mut().expect("guarded").await }, if opened.is_some() => {
                    opened = None;
                    if res.is_ok() {
                        // The DPU is reset and no byte of this stream is written
                        // yet: whatever the log holds now is not about it.
                        match follower.poll().await {
                            Ok(stale) if !stale.is_empty() => {
                                tracing::debug!(rshim = %self.rshim, lines = stale.len(), "drained log lines from before the push");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(rshim = %self.rshim, error = %e, "reading misc failed"),
                        }
                        push.go();
                        push_started = Instant::now();
                        last_moved = push_started;
                        self.rep.stage(Stage::Push);
                    }
                }
                _ = presence.tick() => {
                    if !self.present().await {
                        push.stop();
                        let pushed = if pushing { wait_gone(&mut push).await } else { pushed };
                        return Err(self.removed(self.stage(pushing), pushed));
                    }
                }
                res = &mut push.done, if pushing => {
                    pushing = false;
                    opened = None;
                    pushed = match self.push_result(res, &push) {
                        Ok(n) => n,
                        // A write to a device that went away fails (ENODEV, ENOENT...): say what happened.
                        Err(_) if !self.present().await => {
                            return Err(self.removed(Stage::Push, push.bytes.load(Ordering::Relaxed)));
                        }
                        Err(e) => return Err(e),
                    };
                    let rate = rate(pushed, push_started.elapsed());
                    self.rep.bytes(pushed, push.total, rate);
                    tracing::info!(rshim = %self.rshim, bytes = pushed, rate_mb_s = rate / 1e6, "push complete");
                    push_done_at = Some(Instant::now());
                }
                _ = tick.tick(), if pushing => {
                    let b = push.bytes.load(Ordering::Relaxed);
                    if b != last_bytes {
                        last_bytes = b;
                        last_moved = Instant::now();
                    } else if last_moved.elapsed() >= stall_limit {
                        push.stop();
                        return Err(FlashError::Timeout {
                            rshim: self.rshim.into(),
                            stage: Stage::Push,
                            after: t.push_stall,
                            waiting_for: "the device to accept more of the boot stream",
                        });
                    }
                    if opened.is_none() {
                        self.rep.bytes(b, push.total, rate(b, push_started.elapsed()));
                    }
                }
                // Not while `boot` is being opened: lines from before the reset are
                // drained once it is open, before the first byte is written.
                _ = poll.tick(), if opened.is_none() => {
                    match follower.poll().await {
                        Ok(lines) => {
                            misc_errors = 0;
                            match self.on_lines(&lines, &mut stage_entered) {
                                Decision::Continue => {}
                                Decision::Success(line) => success = Some(line),
                                Decision::Failure(e) => {
                                    if pushing {
                                        // A push that failed closes `boot`, and the DPU
                                        // then logs about the cut stream: the push's own
                                        // error is the cause, if it comes at once.
                                        if let Ok(res) = tokio::time::timeout(PUSH_RESULT_GRACE, &mut push.done).await
                                            && let Err(cause) = self.push_result(res, &push)
                                        {
                                            return Err(cause);
                                        }
                                    }
                                    push.stop();
                                    return Err(e);
                                }
                            }
                        }
                        Err(e) => {
                            if !self.present().await {
                                push.stop();
                                let pushed = if pushing { wait_gone(&mut push).await } else { pushed };
                                return Err(self.removed(self.stage(pushing), pushed));
                            }
                            misc_errors += 1;
                            tracing::warn!(rshim = %self.rshim, error = %e, misc_errors, "reading misc failed");
                            if misc_errors >= MAX_MISC_ERRORS {
                                push.stop();
                                return Err(device_err(e));
                            }
                        }
                    }
                }
                () = sleep_until_opt(deadline), if deadline.is_some() && success.is_none() => {
                    let (after, waiting_for) = self.verdict.limit(&t);
                    return Err(FlashError::Timeout { rshim: self.rshim.into(), stage: self.verdict.waiting(), after, waiting_for });
                }
            }
        }
    }

    /// The device's directory is still there. An error other than "not
    /// found" (a FUSE server that hangs, say) counts as present: the stage
    /// timeouts handle that.
    async fn present(&self) -> bool {
        match tokio::fs::symlink_metadata(self.dir).await {
            Ok(_) => true,
            Err(e) => !matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::ENOTCONN)
            ),
        }
    }

    fn removed(&self, stage: Stage, pushed: u64) -> FlashError {
        tracing::warn!(rshim = %self.rshim, %stage, pushed, "the rshim device disappeared during the flash");
        FlashError::Removed {
            rshim: self.rshim.into(),
            stage,
            pushed,
            path: self.dir.to_path_buf(),
        }
    }

    /// Where a cancelled flash stopped: the push while it is underway (the
    /// firmware may already print boot lines meanwhile), else the stage the
    /// log was waited on for.
    fn stage(&self, pushing: bool) -> Stage {
        if pushing {
            Stage::Push
        } else {
            self.verdict.waiting()
        }
    }

    fn on_lines(&mut self, lines: &[String], stage_entered: &mut Instant) -> Decision {
        if lines.is_empty() {
            return Decision::Continue;
        }
        self.rep.log(lines);
        let mut decision = Decision::Continue;
        for line in lines {
            tracing::info!(rshim = %self.rshim, line = %line, "dpu log");
            self.log.push(line.clone());
            if !matches!(decision, Decision::Continue) {
                continue; // keep the rest of the batch (register dumps) in the log
            }
            let before = self.verdict.stage();
            match self.verdict.on_line(line) {
                Step::Same => {}
                Step::Advanced(s) => {
                    *stage_entered = Instant::now();
                    tracing::info!(rshim = %self.rshim, stage = %s, "stage reached");
                    self.rep.stage(s);
                }
                Step::Failed(line) => {
                    decision = Decision::Failure(FlashError::DpuFailed {
                        rshim: self.rshim.into(),
                        stage: before,
                        line,
                    });
                }
                Step::Reset(line) => {
                    decision = Decision::Failure(FlashError::UnexpectedReset {
                        rshim: self.rshim.into(),
                        stage: before,
                        line,
                    });
                }
                Step::BootedWithoutInstall(line) => {
                    decision = Decision::Failure(FlashError::NotInstalled {
                        rshim: self.rshim.into(),
                        stage: before,
                        line,
                    });
                }
                Step::Succeeded(line) => {
                    self.rep.stage(Stage::LinuxUp);
                    decision = Decision::Success(line);
                }
            }
        }
        decision
    }

    fn push_result(
        &self,
        res: Result<Result<u64, PushFailure>, tokio::sync::oneshot::error::RecvError>,
        push: &PushHandle,
    ) -> Result<u64, FlashError> {
        let rshim = self.rshim.to_string();
        let pushed = push.bytes.load(Ordering::Relaxed);
        let push_err = |source| FlashError::Push {
            rshim: rshim.clone(),
            path: self.boot.to_path_buf(),
            pushed,
            source,
        };
        match res {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(PushFailure::Open(e))) => Err(open_error(&rshim, self.boot, e)),
            Ok(Err(PushFailure::Write(e))) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {
                Err(push_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    match self.boot_timeout {
                        Some(s) => format!(
                            "ETIMEDOUT: the device accepted no data for the driver's BOOT_TIMEOUT ({s} s)"
                        ),
                        None => "ETIMEDOUT: the device accepted no data for the driver's BOOT_TIMEOUT".into(),
                    },
                )))
            }
            Ok(Err(PushFailure::Write(e))) => Err(push_err(e)),
            Ok(Err(PushFailure::Read { path, source })) => Err(FlashError::Image { rshim, path, source }),
            Ok(Err(PushFailure::Stopped)) => Err(push_err(std::io::Error::other("push stopped"))),
            Err(_) => Err(push_err(std::io::Error::other(
                "push thread ended without a result",
            ))),
        }
    }
}

/// EBUSY, drop mode (EINVAL) and a locked device (EPERM) mean someone else
/// owns the device: busy, not retried.
fn open_error(rshim: &str, boot: &Path, e: std::io::Error) -> FlashError {
    match e.raw_os_error() {
        Some(libc::EBUSY | libc::EINVAL | libc::EPERM) => FlashError::Busy {
            rshim: rshim.to_string(),
            reason: format!(
                "opening {}: {}",
                boot.display(),
                describe_errno(&e).unwrap_or("busy")
            ),
        },
        _ if e.kind() == std::io::ErrorKind::NotFound => FlashError::NoDevice {
            rshim: rshim.to_string(),
            path: boot.to_path_buf(),
        },
        _ => FlashError::Push {
            rshim: rshim.to_string(),
            path: PathBuf::from(boot),
            pushed: 0,
            source: e,
        },
    }
}

/// After a stop: wait (bounded) for the writer to close `boot`.
async fn wait_closed(push: &mut PushHandle) -> u64 {
    let _ = tokio::time::timeout(CANCEL_GRACE, &mut push.done).await;
    push.bytes.load(Ordering::Relaxed)
}

/// After a stop because the device is gone: the writer is told to stop,
/// but a write into a vanished device may hang in the kernel, so the flash
/// waits for it at most briefly. The rshim stays claimed until the writer
/// thread ends.
async fn wait_gone(push: &mut PushHandle) -> u64 {
    let _ = tokio::time::timeout(REMOVED_GRACE, &mut push.done).await;
    push.bytes.load(Ordering::Relaxed)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}
