//! Flash engine tests against a fake `misc` (scripted DPU log) and a plain
//! file or FIFO as `boot`. Timer logic runs on paused time.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::bfb_cache::CacheConfig;
use crate::rshim::testing::FakeMisc;

const INSTALL: &[&str] = &[
    "INFO[PSC]: PSC BL1 START",
    "INFO[BL2]: start",
    "INFO[BL31]: start",
    "INFO[UEFI]: exit Boot Service",
    "INFO[MISC]: Found bf.cfg",
    "INFO[MISC]: Ubuntu installation started",
    "INFO[MISC]: Ubuntu installation completed",
    "INFO[MISC]: Installation finished",
    "INFO[MISC]: Rebooting...",
    "INFO[MISC]: Linux up",
    "INFO[MISC]: DPU is ready",
];

struct Rig {
    dir: tempfile::TempDir,
    fake: FakeMisc,
    flasher: Flasher,
    image: PathBuf,
    boot: PathBuf,
}

fn timeouts() -> StageTimeouts {
    StageTimeouts {
        push_stall: Duration::from_secs(365 * 24 * 3600),
        boot: Duration::from_secs(60),
        installer: Duration::from_secs(120),
        install: Duration::from_secs(600),
        linux_up: Duration::from_secs(300),
    }
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    std::fs::create_dir_all(dev.join("rshim0")).unwrap();
    let boot = dev.join("rshim0/boot");
    std::fs::write(&boot, b"").unwrap();
    let image = dir.path().join("image.bfb");
    let mut f = std::fs::File::create(&image).unwrap();
    hostplane_bfb::write_test_bfb(&mut f, 300_000, "4.9.0", 7).unwrap();
    let fake = FakeMisc::new("rshim0");
    let cache = BfbCache::new(CacheConfig {
        dir: dir.path().join("cache"),
        ..Default::default()
    })
    .unwrap();
    let cfg = FlashConfig {
        dev_root: dev,
        run_dir: dir.path().join("run"),
        push_chunk: 64 << 10,
        push_write_max: 16 << 10,
        stage_timeouts: timeouts(),
        poll_interval: Duration::from_millis(50),
        progress_interval: Duration::from_millis(250),
    };
    let f2 = fake.clone();
    let opener: MiscOpener = Arc::new(move |_| Arc::new(f2.clone()) as Arc<dyn MiscDevice>);
    let flasher = Flasher::with_misc_opener(cfg, Arc::new(cache), opener);
    Rig {
        dir,
        fake,
        flasher,
        image,
        boot,
    }
}

impl Rig {
    /// The device's misc values are back to what they were before the flash.
    fn assert_restored(&self) {
        let s = self.fake.state.lock().unwrap();
        assert_eq!(
            (s.display_level, s.clear_on_read, s.boot_timeout),
            (0, false, 300),
            "{:?}",
            s.commands
        );
    }

    fn request(&self, bf_cfg: BfCfg) -> FlashRequest {
        FlashRequest {
            rshim: "rshim0".into(),
            image: ImageSource::LocalFile(self.image.clone()),
            bf_cfg,
        }
    }

    /// Play the DPU: once the stream reaches `boot`, print `lines`, one every
    /// `every`, starting after `delay`.
    fn dpu(&self, lines: &[&str], delay: Duration, every: Duration) {
        let fake = self.fake.clone();
        let lines: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        let boot = self.boot.clone();
        tokio::spawn(async move {
            wait_for_stream(&boot).await;
            tokio::time::sleep(delay).await;
            for l in lines {
                fake.log(&l);
                tokio::time::sleep(every).await;
            }
        });
    }

    async fn flash(&self, bf_cfg: BfCfg) -> (Result<FlashReport, FlashError>, Vec<FlashProgress>) {
        let (tx, mut rx) = mpsc::channel(10_000);
        let res = self
            .flasher
            .flash(self.request(bf_cfg), tx, CancellationToken::new())
            .await;
        let mut seen = Vec::new();
        while let Ok(p) = rx.try_recv() {
            seen.push(p);
        }
        (res, seen)
    }
}

/// A real DPU prints nothing about a stream before it gets its first bytes.
async fn wait_for_stream(boot: &Path) {
    while std::fs::metadata(boot)
        .map(|m| m.file_type().is_file() && m.len() == 0)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn params() -> BfCfg {
    BfCfg::Params(BTreeMap::from([
        ("HOSTNAME".to_string(), "dpu-0".to_string()),
        ("ubuntu_PASSWORD".to_string(), "$1$x$y".to_string()),
    ]))
}

#[tokio::test(start_paused = true)]
async fn installs_with_bf_cfg_and_reports_every_stage() {
    let r = rig();
    r.dpu(INSTALL, Duration::from_secs(1), Duration::from_secs(5));
    let (res, progress) = r.flash(params()).await;
    let report = res.unwrap();
    assert_eq!(report.verdict_line, "INFO[MISC]: Linux up");
    assert_eq!(report.log, INSTALL[..10].to_vec());

    // boot received the image, then bf.cfg, raw.
    let mut want = std::fs::read(&r.image).unwrap();
    want.extend_from_slice(b"HOSTNAME='dpu-0'\nubuntu_PASSWORD='$1$x$y'\n");
    assert_eq!(std::fs::read(&r.boot).unwrap(), want);
    assert_eq!(report.bytes_pushed, want.len() as u64);

    let mut stages: Vec<String> = progress.iter().map(|p| p.stage.clone()).collect();
    stages.dedup();
    assert_eq!(
        stages,
        [
            "prepare",
            "device",
            "push",
            "boot",
            "installer",
            "installed",
            "linux-up"
        ]
    );
    assert!(
        progress
            .iter()
            .any(|p| p.bytes_pushed == want.len() as u64 && p.bytes_total == p.bytes_pushed)
    );
    assert!(
        progress
            .iter()
            .any(|p| p.last_log_line == "INFO[MISC]: Found bf.cfg")
    );

    let cmds = r.fake.commands();
    let stall = timeouts().push_stall.as_secs();
    assert_eq!(
        cmds[..3],
        [
            format!("BOOT_TIMEOUT {stall}"),
            "CLEAR_ON_READ 1".into(),
            "DISPLAY_LEVEL 2".into()
        ]
    );
    assert_eq!(
        cmds[3..],
        ["DISPLAY_LEVEL 0", "CLEAR_ON_READ 0", "BOOT_TIMEOUT 300"],
        "restored in reverse order"
    );
    r.assert_restored();
    assert!(!r.flasher.is_flashing("rshim0"));
}

#[tokio::test(start_paused = true)]
async fn corrupt_image_is_refused_before_the_device_is_touched() {
    let r = rig();
    let mut data = std::fs::read(&r.image).unwrap();
    data[30] ^= 0x55; // inside the first image (BL2)
    std::fs::write(&r.image, &data).unwrap();
    std::fs::write(&r.boot, b"untouched").unwrap();
    let (res, _) = r.flash(params()).await;
    let err = res.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            FlashError::Verify {
                source: hostplane_bfb::Error::CrcMismatch {
                    image_id: 1,
                    offset: 0,
                    ..
                },
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("id 1") && msg.contains("offset 0"), "{msg}");
    assert_eq!(err.stage(), Stage::Prepare);
    assert_eq!(std::fs::read(&r.boot).unwrap(), b"untouched");
    assert_eq!(r.fake.reads(), 0);
    assert!(r.fake.commands().is_empty());
}

#[tokio::test(start_paused = true)]
async fn bad_bf_cfg_is_refused_before_the_device_is_touched() {
    let r = rig();
    let bad = BfCfg::Params(BTreeMap::from([("BAD KEY".to_string(), "x".to_string())]));
    let (res, _) = r.flash(bad).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, FlashError::BfCfg { .. }) && err.to_string().contains("BAD KEY"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&r.boot).unwrap().len(), 0);
    assert!(r.fake.commands().is_empty());
}

#[tokio::test(start_paused = true)]
async fn stale_failure_lines_from_before_are_ignored() {
    let r = rig();
    r.fake.log("ERR[MISC]: Installation failed");
    r.dpu(INSTALL, Duration::from_secs(1), Duration::from_secs(1));
    let (res, _) = r.flash(BfCfg::None).await;
    let report = res.unwrap();
    assert!(!report.log.iter().any(|l| l.contains("ERR")));
}

#[tokio::test(start_paused = true)]
async fn dpu_error_fails_with_its_own_line_even_if_linux_comes_up() {
    let r = rig();
    r.dpu(
        &[
            "INFO[BL2]: start",
            "INFO[MISC]: Ubuntu installation started",
            "ERR[MISC]: Installation failed",
            "INFO[MISC]: Linux up",
        ],
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    match &err {
        FlashError::DpuFailed { rshim, stage, line } => {
            assert_eq!(rshim, "rshim0");
            assert_eq!(*stage, Stage::Installer);
            assert_eq!(line, "ERR[MISC]: Installation failed");
        }
        other => panic!("{other}"),
    }
    r.assert_restored();
}

#[tokio::test(start_paused = true)]
async fn crash_keeps_register_lines_of_the_batch_in_the_log() {
    let r = rig();
    r.fake.state.lock().unwrap().log.clear();
    let r2 = r.fake.clone();
    let boot = r.boot.clone();
    tokio::spawn(async move {
        wait_for_stream(&boot).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // One read returns the whole crash.
        let mut s = r2.state.lock().unwrap();
        s.log
            .extend(["INFO[BL2]: start", "PANIC(BL31): PC = 0x2", "x0 = 0x1"].map(String::from));
    });
    let (tx, mut rx) = mpsc::channel(100);
    let (ltx, mut lrx) = mpsc::channel(100);
    let err = r
        .flasher
        .flash_with_log(r.request(BfCfg::None), tx, Some(ltx), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FlashError::DpuFailed { ref line, .. } if line == "PANIC(BL31): PC = 0x2"),
        "{err}"
    );
    let mut lines = Vec::new();
    while let Ok(l) = lrx.try_recv() {
        lines.push(l);
    }
    assert_eq!(lines, ["INFO[BL2]: start", "PANIC(BL31): PC = 0x2", "x0 = 0x1"]);
    assert!(rx.try_recv().is_ok());
}

#[tokio::test(start_paused = true)]
async fn linux_up_without_completed_install_is_not_success() {
    let r = rig();
    r.dpu(
        &["INFO[BL2]: start", "INFO[MISC]: Linux up"],
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            FlashError::NotInstalled {
                stage: Stage::Boot,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn hang_in_installer_times_out_naming_the_stage() {
    let r = rig();
    r.dpu(&INSTALL[..6], Duration::from_secs(1), Duration::from_secs(1));
    let t0 = tokio::time::Instant::now();
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    match &err {
        FlashError::Timeout {
            stage,
            after,
            waiting_for,
            ..
        } => {
            assert_eq!(*stage, Stage::Installed, "the stage waited for");
            assert_eq!(*after, timeouts().install);
            assert!(waiting_for.contains("installation"), "{waiting_for}");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("stage installed"), "{err}");
    // The timeout counts from entering the installer stage (a few seconds in), not from the start.
    let waited = t0.elapsed();
    assert!(
        waited >= timeouts().install && waited < timeouts().install + Duration::from_secs(60),
        "{waited:?}"
    );
    r.assert_restored();
}

#[tokio::test(start_paused = true)]
async fn silent_dpu_times_out_waiting_for_boot() {
    let r = rig();
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, FlashError::Timeout { stage: Stage::Boot, after, .. } if after == timeouts().boot),
        "{err}"
    );
    assert!(err.to_string().contains("first boot log line"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn second_flash_of_the_same_rshim_is_refused_at_once() {
    let r = rig();
    r.dpu(INSTALL, Duration::from_secs(5), Duration::from_secs(5));
    let (tx, _rx) = mpsc::channel(100);
    let first = r
        .flasher
        .flash(r.request(BfCfg::None), tx.clone(), CancellationToken::new());
    let second = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(r.flasher.is_flashing("rshim0"), "first flash still runs");
        r.flasher
            .flash(r.request(BfCfg::None), tx.clone(), CancellationToken::new())
            .await
    };
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    let err = b.unwrap_err();
    assert!(
        err.is_busy() && err.to_string().contains("another flash"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn drop_mode_is_busy_and_boot_is_not_opened() {
    let r = rig();
    r.fake.state.lock().unwrap().drop_mode = true;
    std::fs::write(&r.boot, b"untouched").unwrap();
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    assert!(err.is_busy() && err.to_string().contains("DROP_MODE"), "{err}");
    assert_eq!(std::fs::read(&r.boot).unwrap(), b"untouched");
}

#[tokio::test(start_paused = true)]
async fn missing_device_and_bad_names_are_reported() {
    let r = rig();
    let mut req = r.request(BfCfg::None);
    req.rshim = "rshim5".into();
    let (tx, _rx) = mpsc::channel(10);
    let err = r
        .flasher
        .flash(req.clone(), tx.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FlashError::NoDevice { ref path, .. } if path.ends_with("rshim5/boot")),
        "{err}"
    );
    req.rshim = "../etc".into();
    let err = r
        .flasher
        .flash(req, tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, FlashError::InvalidRshim { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn cancel_while_following_the_log() {
    let r = rig();
    r.dpu(&INSTALL[..3], Duration::from_secs(1), Duration::from_secs(1));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        c2.cancel();
    });
    let (tx, _rx) = mpsc::channel(100);
    let err = r
        .flasher
        .flash(r.request(BfCfg::None), tx, cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FlashError::Cancelled {
                stage: Stage::Installer,
                ..
            }
        ),
        "{err}"
    );
    r.assert_restored();
    assert!(!r.flasher.is_flashing("rshim0"));
}

fn make_fifo(path: &Path) {
    std::fs::remove_file(path).ok();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Real time: a slow reader on a FIFO stands in for the device.
#[tokio::test]
async fn cancel_stops_the_push_and_closes_boot() {
    let r = rig();
    // A bigger image so the push takes a while.
    let mut f = std::fs::File::create(&r.image).unwrap();
    hostplane_bfb::write_test_bfb(&mut f, 8 << 20, "4.9.0", 9).unwrap();
    let total = std::fs::metadata(&r.image).unwrap().len();
    make_fifo(&r.boot);
    let boot = r.boot.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(boot).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(1000);
    let flasher = r.flasher.clone();
    let req = r.request(BfCfg::None);
    let c2 = cancel.clone();
    let run = tokio::spawn(async move { flasher.flash(req, tx, c2).await });
    // Cancel once bytes are moving.
    while let Some(p) = rx.recv().await {
        if p.bytes_pushed > 0 {
            break;
        }
    }
    cancel.cancel();
    let err = run.await.unwrap().unwrap_err();
    let FlashError::Cancelled { stage, pushed, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(stage, Stage::Push);
    assert!(pushed > 0 && pushed < total, "{pushed} of {total}");
    // The writer closed boot: the reader saw end-of-file early.
    let got = reader.join().unwrap();
    assert!(got < total, "{got} of {total}");
    assert!(!r.flasher.is_flashing("rshim0"));
    drop(r.dir);
}

#[tokio::test(start_paused = true)]
async fn push_that_makes_no_progress_times_out_in_push_and_keeps_the_slot() {
    let r = rig();
    make_fifo(&r.boot); // nobody reads: open blocks like a hung device
    let mut cfg = r.flasher.config().clone();
    cfg.stage_timeouts.push_stall = Duration::from_secs(30);
    let f2 = r.fake.clone();
    let opener: MiscOpener = Arc::new(move |_| Arc::new(f2.clone()) as Arc<dyn MiscDevice>);
    let flasher = Flasher::with_misc_opener(cfg, r.flasher.cache().clone(), opener);
    let (tx, _rx) = mpsc::channel(100);
    let err = flasher
        .flash(r.request(BfCfg::None), tx, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            FlashError::Timeout {
                stage: Stage::Push,
                ..
            }
        ),
        "{err}"
    );
    // The writer thread is still stuck in the device: the rshim stays claimed.
    assert!(flasher.is_flashing("rshim0"));
    // Unstick it (a reader appears); the writer sees the stop and closes.
    let boot = r.boot.clone();
    let drain = std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = Vec::new();
        std::fs::File::open(boot).unwrap().read_to_end(&mut sink).unwrap();
    });
    drain.join().unwrap();
    for _ in 0..500 {
        if !flasher.is_flashing("rshim0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!flasher.is_flashing("rshim0"));
}

#[tokio::test]
async fn discover_does_not_read_a_device_being_flashed() {
    let r = rig();
    std::fs::write(
        r.boot.parent().unwrap().join("misc"),
        "DEV_NAME        pcie-0000:04:00.2\n",
    )
    .unwrap();
    let found = r.flasher.discover().await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pci_address, "0000:04:00.2");
    let _slot = r.flasher.claim("rshim0", "test".into()).await.unwrap();
    std::fs::remove_file(r.boot.parent().unwrap().join("misc")).unwrap();
    let found = r.flasher.discover().await;
    assert_eq!(found[0].name, "rshim0");
    assert_eq!(found[0].error, "", "not read while flashing");
}

#[test]
fn error_stages_and_config_defaults() {
    let e = FlashError::Timeout {
        rshim: "rshim1".into(),
        stage: Stage::Installer,
        after: Duration::from_secs(90),
        waiting_for: "x",
    };
    assert_eq!(e.stage(), Stage::Installer);
    assert_eq!(
        e.to_string(),
        "rshim1: timed out in stage installer after 1m 30s waiting for x"
    );
    let c = FlashConfig::default();
    assert_eq!(c.dev_root, Path::new("/dev"));
    assert_eq!(c.push_chunk, 1 << 20);
    assert_eq!(c.poll_interval, Duration::from_secs(1));
    let parsed: FlashConfig =
        serde_json::from_str(r#"{"poll_interval":"50ms","stage_timeouts":{"boot":"2m"}}"#).unwrap();
    assert_eq!(parsed.poll_interval, Duration::from_millis(50));
    assert_eq!(parsed.stage_timeouts.boot, Duration::from_secs(120));
    assert_eq!(parsed.stage_timeouts.install, StageTimeouts::default().install);
    assert!(serde_json::from_str::<FlashConfig>(r#"{"bogus":1}"#).is_err());
}

/// Real time: a line printed by the old OS after the first drain but before
/// `boot` finished opening (the reset) must not count for the new stream.
#[tokio::test]
async fn lines_from_before_the_reset_are_not_taken_for_the_new_boot() {
    let r = rig();
    make_fifo(&r.boot); // open blocks until the "device" (a reader) is there
    let (tx, _rx) = mpsc::channel(1000);
    let flasher = r.flasher.clone();
    let req = r.request(BfCfg::None);
    let run = tokio::spawn(async move { flasher.flash(req, tx, CancellationToken::new()).await });
    // Wait for the first drain (DISPLAY_LEVEL 2 then a read).
    while !(r.fake.commands().iter().any(|c| c == "DISPLAY_LEVEL 2") && r.fake.reads() >= 2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    r.fake.log("INFO[MISC]: Linux up"); // the old OS, still booting
    tokio::time::sleep(Duration::from_millis(300)).await; // several poll intervals
    let boot = r.boot.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut sink = Vec::new();
        std::fs::File::open(boot).unwrap().read_to_end(&mut sink).unwrap();
        sink.len()
    });
    // The new stream's boot, once bytes flow.
    r.dpu(INSTALL, Duration::from_millis(200), Duration::from_millis(20));
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.log, INSTALL[..10].to_vec());
    assert_eq!(reader.join().unwrap() as u64, report.bytes_pushed);
}

#[tokio::test(start_paused = true)]
async fn a_reset_during_the_installation_fails_at_once_naming_it() {
    let r = rig();
    let mut lines = INSTALL[..6].to_vec();
    lines.push("INFO[PSC]: PSC BL1 START"); // someone reset the DPU
    lines.push("INFO[BL31]: start");
    r.dpu(&lines, Duration::from_secs(1), Duration::from_secs(1));
    let t0 = tokio::time::Instant::now();
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, FlashError::UnexpectedReset { stage: Stage::Installer, line, .. } if line == "INFO[PSC]: PSC BL1 START"),
        "{err}"
    );
    assert!(err.to_string().contains("reset"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    r.assert_restored();
}

/// Two flashers sharing a run dir stand for two processes (the daemon and a
/// CLI): flock locks conflict between open files, in one process or two.
#[tokio::test(start_paused = true)]
async fn another_flasher_on_the_same_host_is_refused_naming_the_holder() {
    let r = rig();
    r.dpu(INSTALL, Duration::from_secs(5), Duration::from_secs(5));
    let other = Flasher::with_misc_opener(
        r.flasher.config().clone(),
        r.flasher.cache().clone(),
        Arc::new(|_: &RshimPaths| Arc::new(FakeMisc::new("rshim0")) as Arc<dyn MiscDevice>),
    );
    let (tx, _rx) = mpsc::channel(100);
    let first = r
        .flasher
        .flash(r.request(BfCfg::None), tx.clone(), CancellationToken::new());
    let second = async {
        tokio::time::sleep(Duration::from_secs(12)).await;
        let res = other
            .flash(r.request(BfCfg::None), tx.clone(), CancellationToken::new())
            .await;
        (res, tokio::time::Instant::now())
    };
    let t0 = tokio::time::Instant::now();
    let (a, (b, refused_at)) = tokio::join!(first, second);
    a.unwrap();
    let err = b.unwrap_err();
    let msg = err.to_string();
    assert!(err.is_busy(), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id()))
            && msg.contains(&r.image.display().to_string())
            && msg.contains("rshim0.flash.lock"),
        "{msg}"
    );
    assert!(refused_at - t0 < Duration::from_secs(13), "refused at once");
    // Once the first flash is over, the lock is free again.
    r.dpu(INSTALL, Duration::from_secs(1), Duration::from_secs(1));
    let (tx, _rx) = mpsc::channel(100);
    std::fs::write(&r.boot, b"").unwrap();
    other
        .flash(r.request(BfCfg::None), tx, CancellationToken::new())
        .await
        .expect_err("the other flasher's fake DPU prints nothing, but it got past the lock")
        .stage()
        .ge(&Stage::Push)
        .then_some(())
        .expect("past the lock");
}

#[tokio::test]
async fn discover_does_not_read_a_device_another_process_is_flashing() {
    let r = rig();
    let misc = r.boot.parent().unwrap().join("misc");
    std::fs::write(&misc, "DEV_NAME        pcie-0000:04:00.2\n").unwrap();
    // Another process (another flasher on the same run dir) holds the lock.
    let other = Flasher::with_misc_opener(
        r.flasher.config().clone(),
        r.flasher.cache().clone(),
        Arc::new(|_: &RshimPaths| Arc::new(FakeMisc::new("rshim0")) as Arc<dyn MiscDevice>),
    );
    let slot = other.claim("rshim0", "/img/x.bfb".into()).await.unwrap();
    std::fs::remove_file(&misc).unwrap();
    let found = r.flasher.discover().await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "rshim0");
    assert!(
        found[0].error.contains("another process is flashing it")
            && found[0].error.contains("flashing /img/x.bfb"),
        "{:?}",
        found[0]
    );
    drop(slot);
    std::fs::write(&misc, "DEV_NAME        pcie-0000:04:00.2\n").unwrap();
    let found = r.flasher.discover().await;
    assert_eq!(
        (found[0].pci_address.as_str(), found[0].error.as_str()),
        ("0000:04:00.2", "")
    );
}

/// Real time: the device goes away while the stream is being pushed (a
/// slow reader on a FIFO stands in for it): the flash fails at once,
/// naming the device and the stage, not after a stage timeout.
#[tokio::test]
async fn a_device_removed_mid_push_fails_the_flash_at_once() {
    let r = rig();
    let mut f = std::fs::File::create(&r.image).unwrap();
    hostplane_bfb::write_test_bfb(&mut f, 8 << 20, "4.9.0", 9).unwrap();
    let total = std::fs::metadata(&r.image).unwrap().len();
    make_fifo(&r.boot);
    let boot = r.boot.clone();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(boot).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let (tx, mut rx) = mpsc::channel(1000);
    let flasher = r.flasher.clone();
    let req = r.request(BfCfg::None);
    let run = tokio::spawn(async move { flasher.flash(req, tx, CancellationToken::new()).await });
    while let Some(p) = rx.recv().await {
        if p.bytes_pushed > 0 {
            break;
        }
    }
    let dir = r.boot.parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    let removed_at = std::time::Instant::now();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        removed_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        removed_at.elapsed()
    );
    let msg = err.to_string();
    let FlashError::Removed {
        rshim,
        stage,
        pushed,
        path,
    } = err
    else {
        panic!("{msg}")
    };
    assert_eq!((rshim.as_str(), stage, path), ("rshim0", Stage::Push, dir));
    assert!(pushed > 0 && pushed < total, "{pushed} of {total}");
    assert!(
        msg.starts_with("rshim0 disappeared during the push (device removed)"),
        "{msg}"
    );
    assert_eq!(
        FlashError::Removed {
            rshim,
            stage,
            pushed,
            path: PathBuf::new()
        }
        .stage(),
        Stage::Push
    );
    // The writer stopped and closed boot: the reader saw end-of-file early.
    assert!(reader.join().unwrap() < total);
    assert!(!r.flasher.is_flashing("rshim0"));
}

/// Real time: pushed, the DPU boots, then the device goes away while the
/// agent follows the log (its misc still answers here): the flash fails
/// at once in the stage it was in.
#[tokio::test]
async fn a_device_removed_while_the_dpu_boots_fails_the_flash_in_that_stage() {
    let r = rig();
    r.dpu(
        &INSTALL[..3],
        Duration::from_millis(10),
        Duration::from_millis(10),
    );
    let boot = r.boot.clone();
    let dir = boot.parent().unwrap().to_path_buf();
    let d2 = dir.clone();
    tokio::spawn(async move {
        // The boot lines come 10 ms apart from the stream's first bytes and
        // are read every 50 ms: after 500 ms the agent follows the boot.
        wait_for_stream(&boot).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::fs::remove_dir_all(&d2).unwrap();
    });
    let started = std::time::Instant::now();
    let (res, _) = r.flash(BfCfg::None).await;
    let err = res.unwrap_err();
    // Far below the boot/installer timeouts (60 s / 120 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(
        matches!(err, FlashError::Removed { stage: Stage::Boot | Stage::Installer, ref path, .. } if *path == dir),
        "{msg}"
    );
    assert!(
        msg.contains("rshim0 disappeared during stage") && msg.contains("(device removed)"),
        "{msg}"
    );
    r.assert_restored();
}

/// Real time: the device goes away while the writer is stuck in it (a FIFO
/// nobody reads: opening `boot` blocks, as a vanished device may): the flash
/// still fails at once; the rshim stays claimed until the writer is free.
#[tokio::test]
async fn a_device_removed_while_the_writer_is_stuck_fails_without_waiting_for_it() {
    let r = rig();
    make_fifo(&r.boot);
    let (tx, _rx) = mpsc::channel(100);
    let flasher = r.flasher.clone();
    let req = r.request(BfCfg::None);
    let run = tokio::spawn(async move { flasher.flash(req, tx, CancellationToken::new()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.flasher.is_flashing("rshim0"));
    // Moved away, not deleted: the test can still free the writer afterwards.
    let dir = r.boot.parent().unwrap().to_path_buf();
    let moved = r.dir.path().join("gone-rshim0");
    std::fs::rename(&dir, &moved).unwrap();
    let removed_at = std::time::Instant::now();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        removed_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        removed_at.elapsed()
    );
    assert!(
        matches!(err, FlashError::Removed { stage: Stage::Push, pushed: 0, ref path, .. } if *path == dir),
        "{err}"
    );
    assert!(
        r.flasher.is_flashing("rshim0"),
        "the writer still holds the rshim"
    );
    // A reader frees the writer's open; it sees the stop and lets go.
    let fifo = moved.join("boot");
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    for _ in 0..500 {
        if !r.flasher.is_flashing("rshim0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!r.flasher.is_flashing("rshim0"));
}
