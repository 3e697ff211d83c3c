//! Hot-plug: watch the dev root for rshim devices appearing and
//! disappearing (a DPU whose rshim driver starts after the agent, a USB
//! rshim plugged in or pulled out), so that the session re-sends the
//! inventory without a restart.
//!
//! inotify on the dev root says when something changed; the dev root is
//! also listed every `rescan_interval` whatever inotify says, because
//! inotify can be missing (a kernel without it, a dev root that does not
//! exist yet) or silent (a FUSE-served directory changed by its server, as
//! the simulator's is, raises no events). A change is reported once the dev
//! root has been quiet for `debounce`, so that a device directory's files
//! are there when the inventory reads them. The agent config's
//! `rshim_watch:` section is [`RshimWatchConfig`].

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch as channel;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::is_rshim_name;

/// The `rshim<N>` directories under the dev root.
pub type RshimSet = BTreeSet<String>;

/// The `rshim_watch:` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RshimWatchConfig {
    /// Watch the dev root and re-send the inventory when rshim devices come
    /// or go; false: the inventory is sent in Hello only (at each connect).
    pub enabled: bool,
    /// List the dev root this often whatever inotify says (the fallback
    /// when inotify is unavailable or silent); the session also reads the
    /// inventory again this often and sends it when an entry changed.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// A change is reported once the dev root has been quiet this long.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

impl Default for RshimWatchConfig {
    fn default() -> Self {
        RshimWatchConfig {
            enabled: true,
            rescan_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(500),
        }
    }
}

impl RshimWatchConfig {
    /// The section's own checks: the field and why, for the first problem found.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.rescan_interval < Duration::from_millis(10) {
            return Err((
                "rshim_watch.rescan_interval",
                format!("{:?} is too short (at least 10ms)", self.rescan_interval),
            ));
        }
        if self.debounce > Duration::from_secs(60) {
            return Err((
                "rshim_watch.debounce",
                format!("{:?} is too long (at most 60s)", self.debounce),
            ));
        }
        Ok(())
    }
}

/// The rshim device directories under `dev_root` now (blocking; a missing
/// or unreadable dev root has none).
pub fn list(dev_root: &Path) -> RshimSet {
    let Ok(entries) = std::fs::read_dir(dev_root) else {
        return RshimSet::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            (is_rshim_name(&name) && e.path().is_dir()).then_some(name)
        })
        .collect()
}

/// Watch `dev_root` until `cancel` (or until every receiver is gone). The
/// receiver holds the current set of rshim devices, listed once before this
/// returns, and is told when it changes (after the debounce), and also when
/// inotify saw an rshim device come or go though the names end up the same
/// (a DPU replaced within the debounce: the receiver reads the devices
/// again); each device that came or went is logged.
pub fn watch(
    dev_root: PathBuf,
    cfg: &RshimWatchConfig,
    cancel: CancellationToken,
) -> channel::Receiver<RshimSet> {
    watch_with(dev_root, cfg, cancel, true)
}

/// [`watch`], with inotify off when `use_inotify` is false (the periodic
/// rescan alone: what a host without inotify gets).
pub fn watch_with(
    dev_root: PathBuf,
    cfg: &RshimWatchConfig,
    cancel: CancellationToken,
    use_inotify: bool,
) -> channel::Receiver<RshimSet> {
    let mut w = Watcher {
        inotify: None,
        warned: false,
        use_inotify,
        dev_root,
        cfg: cfg.clone(),
    };
    // The watch first, then the listing: nothing that happens in between is missed.
    w.arm();
    let (tx, rx) = channel::channel(list(&w.dev_root));
    tokio::spawn(w.run(tx, cancel));
    rx
}

/// The inotify instance, for [`AsyncFd`].
struct Ino(Inotify);

impl AsRawFd for Ino {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct Watcher {
    inotify: Option<AsyncFd<Ino>>,
    /// The inotify failure was logged at warn (later ones at debug).
    warned: bool,
    use_inotify: bool,
    dev_root: PathBuf,
    cfg: RshimWatchConfig,
}

impl Watcher {
    async fn run(mut self, tx: channel::Sender<RshimSet>, cancel: CancellationToken) {
        tracing::info!(
            dev_root = %self.dev_root.display(),
            inotify = self.inotify.is_some(),
            rescan_interval = ?self.cfg.rescan_interval,
            devices = ?*tx.borrow(),
            "watching for rshim devices"
        );
        let period = self.cfg.rescan_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // An inotify event on an rshim name: the device may have been
            // replaced (removed and added within the debounce) even when the
            // names end up the same.
            let evented = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                relevant = self.next_event() => {
                    if !relevant {
                        continue;
                    }
                    true
                }
                _ = tick.tick() => {
                    if self.inotify.is_none() {
                        self.arm();
                    }
                    false
                }
            };
            let now = self.list().await;
            if !evented && now == *tx.borrow() {
                continue;
            }
            // Let the device's files appear (or the rest of a batch of
            // changes happen) before anyone reads the inventory.
            if !self.quiet(&cancel).await {
                return;
            }
            let now = self.list().await;
            let before = tx.borrow().clone();
            if now == before {
                if evented {
                    // Same names: the receiver re-reads the devices and
                    // compares what it finds with what it had.
                    tracing::debug!(dev_root = %self.dev_root.display(), "rshim devices touched; names unchanged");
                    tx.send_replace(now);
                }
                continue;
            }
            for name in now.difference(&before) {
                tracing::info!(rshim = %name, dev_root = %self.dev_root.display(), "rshim device appeared");
            }
            for name in before.difference(&now) {
                tracing::warn!(rshim = %name, dev_root = %self.dev_root.display(), "rshim device disappeared");
            }
            tx.send_replace(now);
        }
    }

    async fn list(&self) -> RshimSet {
        let root = self.dev_root.clone();
        tokio::task::spawn_blocking(move || list(&root))
            .await
            .unwrap_or_default()
    }

    /// Wait until no inotify event came for `debounce`. False on cancel.
    async fn quiet(&mut self, cancel: &CancellationToken) -> bool {
        let debounce = self.cfg.debounce;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                () = tokio::time::sleep(debounce) => return true,
                _ = self.next_event() => {}
            }
        }
    }

    /// Set up inotify on the dev root (when it is used and not set up yet).
    fn arm(&mut self) {
        if !self.use_inotify || self.inotify.is_some() {
            return;
        }
        match open_inotify(&self.dev_root) {
            Ok(fd) => {
                if self.warned {
                    tracing::info!(dev_root = %self.dev_root.display(), "inotify on the dev root works again");
                }
                self.warned = false;
                self.inotify = Some(fd);
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(
                    dev_root = %self.dev_root.display(),
                    error = %e,
                    rescan_interval = ?self.cfg.rescan_interval,
                    "cannot watch the dev root with inotify; rescanning it periodically instead"
                );
            }
            Err(e) => {
                tracing::debug!(dev_root = %self.dev_root.display(), error = %e, "inotify still unavailable")
            }
        }
    }

    /// The next batch of inotify events: true when it may concern an rshim
    /// device (or the watch itself was lost). Pending forever without inotify.
    async fn next_event(&mut self) -> bool {
        let Some(fd) = &self.inotify else {
            return std::future::pending().await;
        };
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "inotify failed; rescanning periodically");
                self.inotify = None;
                return true;
            }
        };
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                let lost = AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_Q_OVERFLOW;
                let mut relevant = false;
                let mut gone = false;
                for e in &events {
                    gone |= e.mask.intersects(lost);
                    relevant |= e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                        || e.name
                            .as_ref()
                            .and_then(|n| n.to_str())
                            .is_some_and(is_rshim_name);
                }
                drop(guard);
                if gone {
                    tracing::debug!(dev_root = %self.dev_root.display(), "inotify watch lost; re-armed at the next rescan");
                    self.inotify = None;
                    return true;
                }
                relevant
            }
            Err(Errno::EAGAIN) => {
                guard.clear_ready();
                false
            }
            Err(e) => {
                drop(guard);
                tracing::warn!(error = %e, "reading inotify events failed; rescanning periodically");
                self.inotify = None;
                true
            }
        }
    }
}

fn open_inotify(dev_root: &Path) -> std::io::Result<AsyncFd<Ino>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dev_root,
        AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR,
    )?;
    // `new` is deprecated for wrappers that might close or swap their fd;
    // `Ino` owns the inotify descriptor (an `OwnedFd` inside `Inotify`) for
    // the whole life of the `AsyncFd` and always returns that same one, which
    // is what the unsafe `register` would have us promise (and this crate
    // forbids unsafe code).
    #[allow(deprecated)]
    AsyncFd::new(Ino(ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rescan: Duration) -> RshimWatchConfig {
        RshimWatchConfig {
            enabled: true,
            rescan_interval: rescan,
            debounce: Duration::from_millis(100),
        }
    }

    fn set(names: &[&str]) -> RshimSet {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn add(root: &Path, name: &str) {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("boot"), "").unwrap();
        std::fs::write(dir.join("misc"), "DEV_NAME        pcie-0000:04:00.2\n").unwrap();
    }

    /// The next value, within `within`.
    async fn next(rx: &mut channel::Receiver<RshimSet>, within: Duration) -> Option<RshimSet> {
        tokio::time::timeout(within, rx.changed()).await.ok()?.ok()?;
        Some(rx.borrow_and_update().clone())
    }

    #[tokio::test]
    async fn inotify_reports_devices_coming_and_going() {
        let root = tempfile::tempdir().unwrap();
        add(root.path(), "rshim0");
        std::fs::create_dir(root.path().join("not-rshim")).unwrap();
        std::fs::write(root.path().join("rshim7"), "a file, not a device").unwrap();
        let cancel = CancellationToken::new();
        // A rescan far in the future: only inotify can see these changes.
        let mut rx = watch(
            root.path().to_path_buf(),
            &cfg(Duration::from_secs(3600)),
            cancel.clone(),
        );
        assert_eq!(*rx.borrow_and_update(), set(&["rshim0"]));

        add(root.path(), "rshim1");
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await,
            Some(set(&["rshim0", "rshim1"]))
        );
        std::fs::remove_dir_all(root.path().join("rshim0")).unwrap();
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await,
            Some(set(&["rshim1"]))
        );

        // Other names change nothing.
        std::fs::create_dir(root.path().join("tty9")).unwrap();
        assert_eq!(next(&mut rx, Duration::from_millis(400)).await, None);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_burst_is_reported_once_after_the_debounce() {
        let root = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        // A debounce far longer than the gaps, so a loaded machine does not split the burst.
        let c = RshimWatchConfig {
            debounce: Duration::from_millis(500),
            ..cfg(Duration::from_secs(3600))
        };
        let mut rx = watch(root.path().to_path_buf(), &c, cancel.clone());
        assert!(rx.borrow_and_update().is_empty());
        let started = std::time::Instant::now();
        for i in 0..4 {
            add(root.path(), &format!("rshim{i}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = next(&mut rx, Duration::from_secs(5)).await;
        assert_eq!(got, Some(set(&["rshim0", "rshim1", "rshim2", "rshim3"])));
        assert!(started.elapsed() >= Duration::from_millis(500), "debounced");
        assert_eq!(
            next(&mut rx, Duration::from_millis(300)).await,
            None,
            "one report"
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_device_replaced_within_the_debounce_is_told_though_the_names_are_the_same() {
        let root = tempfile::tempdir().unwrap();
        add(root.path(), "rshim0");
        let cancel = CancellationToken::new();
        let c = RshimWatchConfig {
            debounce: Duration::from_millis(300),
            ..cfg(Duration::from_secs(3600))
        };
        let mut rx = watch(root.path().to_path_buf(), &c, cancel.clone());
        assert_eq!(*rx.borrow_and_update(), set(&["rshim0"]));
        std::fs::remove_dir_all(root.path().join("rshim0")).unwrap();
        add(root.path(), "rshim0");
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await,
            Some(set(&["rshim0"]))
        );
        assert_eq!(next(&mut rx, Duration::from_millis(500)).await, None, "told once");
        cancel.cancel();
    }

    #[tokio::test]
    async fn without_inotify_the_rescan_finds_changes() {
        let root = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let mut rx = watch_with(
            root.path().to_path_buf(),
            &cfg(Duration::from_millis(50)),
            cancel.clone(),
            false,
        );
        add(root.path(), "rshim3");
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await,
            Some(set(&["rshim3"]))
        );
        std::fs::remove_dir_all(root.path().join("rshim3")).unwrap();
        assert_eq!(next(&mut rx, Duration::from_secs(5)).await, Some(set(&[])));
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_dev_root_created_later_is_watched_once_it_exists() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("dev");
        let cancel = CancellationToken::new();
        let mut rx = watch(root.clone(), &cfg(Duration::from_millis(50)), cancel.clone());
        assert!(rx.borrow_and_update().is_empty());
        std::fs::create_dir(&root).unwrap();
        add(&root, "rshim0");
        assert_eq!(
            next(&mut rx, Duration::from_secs(5)).await,
            Some(set(&["rshim0"]))
        );
        cancel.cancel();
    }

    #[tokio::test]
    async fn stops_on_cancel() {
        let root = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let mut rx = watch(
            root.path().to_path_buf(),
            &cfg(Duration::from_millis(20)),
            cancel.clone(),
        );
        cancel.cancel();
        // The sender is dropped when the task ends.
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(ended.is_ok(), "the watcher ended");
    }

    #[test]
    fn config_checks_name_the_field() {
        assert!(RshimWatchConfig::default().validate().is_ok());
        let c = RshimWatchConfig {
            rescan_interval: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "rshim_watch.rescan_interval");
        let c = RshimWatchConfig {
            debounce: Duration::from_secs(61),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "rshim_watch.debounce");
    }
}
