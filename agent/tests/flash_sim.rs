//! The flash engine against the DPU simulator mounted through FUSE in a temp
//! dir: the agent drives `<root>/rshimN/{boot,misc}` exactly as `/dev/rshimN`.
//! Skipped, with a message, where /dev/fuse is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostplane_agent::bfb_cache::{BfbCache, CacheConfig};
use hostplane_agent::bfcfg::BfCfg;
use hostplane_agent::flash::{
    FlashConfig, FlashError, FlashRequest, Flasher, ImageSource, Stage, StageTimeouts,
};
use hostplane_proto::v1::{BfbRef, FlashProgress};
use hostplane_sim::{Fault, Phase, SimConfig, SimHandle, Timings};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const VERSION: &str = "4.9.1";

/// Field order matters: unmount before the temp dir goes.
struct Rig {
    sim: SimHandle,
    flasher: Flasher,
    image: PathBuf,
    dir: tempfile::TempDir,
}

fn timeouts() -> StageTimeouts {
    let t = Duration::from_secs(60);
    StageTimeouts {
        push_stall: t,
        boot: t,
        installer: t,
        install: t,
        linux_up: t,
    }
}

fn write_image(path: &Path, size: u64, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    hostplane_bfb::write_test_bfb(&mut f, size, VERSION, seed).unwrap();
}

fn rig_with(dpus: usize, image_size: u64, t: StageTimeouts) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dev");
    let cfg = SimConfig {
        dpus,
        timings: Timings::uniform(Duration::from_millis(10)),
        ..SimConfig::default()
    };
    let sim = match hostplane_sim::mount(&root, cfg) {
        Ok(s) => s,
        Err(e) if e.is_fuse_unavailable() => {
            eprintln!("skipping: {e}");
            return None;
        }
        Err(e) => panic!("mounting the simulator: {e}"),
    };
    let image = dir.path().join("image.bfb");
    write_image(&image, image_size, 5);
    let cache = BfbCache::new(CacheConfig {
        dir: dir.path().join("cache"),
        ..CacheConfig::default()
    })
    .unwrap();
    let flasher = Flasher::new(
        FlashConfig {
            dev_root: sim.root().to_path_buf(),
            run_dir: dir.path().join("run"),
            stage_timeouts: t,
            poll_interval: Duration::from_millis(20),
            ..FlashConfig::default()
        },
        Arc::new(cache),
    );
    Some(Rig {
        sim,
        flasher,
        image,
        dir,
    })
}

fn rig(dpus: usize) -> Option<Rig> {
    rig_with(dpus, 2 << 20, timeouts())
}

impl Rig {
    fn request(&self, rshim: &str, bf_cfg: BfCfg) -> FlashRequest {
        FlashRequest {
            rshim: rshim.into(),
            image: ImageSource::LocalFile(self.image.clone()),
            bf_cfg,
        }
    }

    async fn flash(
        &self,
        req: FlashRequest,
    ) -> (
        Result<hostplane_agent::flash::FlashReport, FlashError>,
        Vec<FlashProgress>,
    ) {
        let (tx, mut rx) = mpsc::channel(10_000);
        let res = self.flasher.flash(req, tx, CancellationToken::new()).await;
        let mut seen = Vec::new();
        while let Ok(p) = rx.try_recv() {
            seen.push(p);
        }
        (res, seen)
    }
}

fn params() -> BfCfg {
    BfCfg::Params(BTreeMap::from([
        ("BFB_ADD_ON".to_string(), String::new()),
        ("ubuntu_PASSWORD".to_string(), "$1$x$y".to_string()),
        ("HOSTNAME".to_string(), "dpu-a".to_string()),
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_the_cache_with_bf_cfg() {
    let Some(r) = rig(1) else { return };
    let data = std::fs::read(&r.image).unwrap();
    let bfb = BfbRef {
        url: format!("file://{}", r.image.display()),
        sha256: hex::encode(Sha256::digest(&data)),
        size_bytes: data.len() as u64,
        ..Default::default()
    };
    let cached = r.flasher.prepare(&bfb, &CancellationToken::new()).await.unwrap();
    assert!(cached.starts_with(r.dir.path().join("cache")));
    let req = FlashRequest {
        rshim: "rshim0".into(),
        image: ImageSource::Ref(bfb),
        bf_cfg: params(),
    };
    let (res, progress) = r.flash(req).await;
    let report = res.unwrap();
    assert_eq!(report.verdict_line, "INFO[MISC]: Linux up");
    assert!(
        report.log.iter().any(|l| l.contains("Found bf.cfg")),
        "{:#?}",
        report.log
    );
    assert!(report.bytes_pushed > data.len() as u64, "image and bf.cfg pushed");

    let st = r.sim.state(0);
    assert_eq!(st.install_count, 1);
    assert_eq!(st.installed_version.as_deref(), Some(VERSION));
    assert_eq!(st.last_push_bytes, report.bytes_pushed);
    assert!(!st.boot_open);
    let mut stages: Vec<&str> = progress.iter().map(|p| p.stage.as_str()).collect();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_image_is_refused_and_the_dpu_never_reset() {
    let Some(r) = rig(1) else { return };
    let mut data = std::fs::read(&r.image).unwrap();
    let n = data.len();
    data[n - 16] ^= 0x01;
    std::fs::write(&r.image, &data).unwrap();
    let before = r.sim.state(0);
    let history = r.sim.history(0).len();
    let (res, _) = r.flash(r.request("rshim0", params())).await;
    let err = res.unwrap_err();
    assert!(matches!(err, FlashError::Verify { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("id 63") && msg.contains("offset"), "{msg}");
    let after = r.sim.state(0);
    assert_eq!(after.push_count, before.push_count, "boot was never opened");
    assert_eq!(after.boot_count, before.boot_count);
    assert_eq!(after.install_count, 0);
    assert_eq!(r.sim.history(0).len(), history, "the DPU printed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_error_fails_with_the_dpus_line() {
    let Some(r) = rig(1) else { return };
    r.sim.set_fault(0, Fault::InstallError);
    let (res, _) = r.flash(r.request("rshim0", params())).await;
    match res.unwrap_err() {
        FlashError::DpuFailed { rshim, stage, line } => {
            assert_eq!(rshim, "rshim0");
            assert_eq!(stage, Stage::Installer);
            assert_eq!(line, "ERR[MISC]: Installation failed");
        }
        other => panic!("{other}"),
    }
    assert_eq!(r.sim.state(0).install_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_fails_with_the_panic_line() {
    let Some(r) = rig(1) else { return };
    r.sim.set_fault(0, Fault::Panic);
    let (res, _) = r.flash(r.request("rshim0", BfCfg::None)).await;
    let err = res.unwrap_err();
    assert!(
        matches!(err, FlashError::DpuFailed { ref line, .. } if line.starts_with("PANIC(BL31)")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_times_out_naming_the_stage() {
    let t = StageTimeouts {
        installer: Duration::from_millis(1500),
        linux_up: Duration::from_millis(1500),
        ..timeouts()
    };
    let Some(r) = rig_with(1, 1 << 20, t) else { return };
    r.sim.set_fault(0, Fault::Hang(hostplane_sim::Stage::Installer));
    let (res, _) = r.flash(r.request("rshim0", params())).await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            FlashError::Timeout {
                stage: Stage::Installer,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("installer to start"), "{err}");

    // Hung after the installation: the stage waited for is named.
    r.sim.set_fault(0, Fault::Hang(hostplane_sim::Stage::Linux));
    let (res, _) = r.flash(r.request("rshim0", params())).await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            FlashError::Timeout {
                stage: Stage::LinuxUp,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_device_is_reported_busy() {
    let Some(r) = rig(1) else { return };
    r.sim.set_fault(0, Fault::Busy);
    let (res, _) = r.flash(r.request("rshim0", BfCfg::None)).await;
    let err = res.unwrap_err();
    assert!(err.is_busy() && err.to_string().contains("EBUSY"), "{err}");
    assert_eq!(err.stage(), Stage::Device);
    assert_eq!(r.sim.state(0).install_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dpus_in_parallel() {
    let Some(r) = rig(2) else { return };
    let (a, b) = tokio::join!(
        r.flash(r.request("rshim0", params())),
        r.flash(r.request("rshim1", params()))
    );
    a.0.unwrap();
    b.0.unwrap();
    for i in 0..2 {
        let st = r.sim.state(i);
        assert_eq!((st.install_count, st.phase), (1, Phase::Up), "{st:?}");
    }
    let found = r.flasher.discover().await;
    let pci: Vec<&str> = found.iter().map(|i| i.pci_address.as_str()).collect();
    assert_eq!(pci, ["0000:04:00.2", "0000:05:00.2"]);
    assert!(found.iter().all(|i| i.error.is_empty()), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_flash_of_the_same_rshim_is_refused_and_cancel_stops_the_push() {
    let Some(r) = rig_with(1, 4 << 20, timeouts()) else {
        return;
    };
    r.sim.set_fault(0, Fault::Slow(1 << 20));
    let total = std::fs::metadata(&r.image).unwrap().len();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(1000);
    let flasher = r.flasher.clone();
    let req = r.request("rshim0", BfCfg::None);
    let c2 = cancel.clone();
    let first = tokio::spawn(async move { flasher.flash(req, tx, c2).await });
    while let Some(p) = rx.recv().await {
        if p.bytes_pushed > 0 {
            break;
        }
    }
    // A second flash of rshim0 is refused at once, and does not disturb the first.
    let (res, _) = r.flash(r.request("rshim0", BfCfg::None)).await;
    let err = res.unwrap_err();
    assert!(
        err.is_busy() && err.to_string().contains("another flash"),
        "{err}"
    );
    assert!(r.sim.state(0).boot_open);

    cancel.cancel();
    let err = first.await.unwrap().unwrap_err();
    let FlashError::Cancelled { stage, pushed, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(stage, Stage::Push);
    assert!(pushed > 0 && pushed < total, "{pushed} of {total}");
    let st = r.sim.state(0);
    assert!(!st.boot_open, "boot closed on cancel");
    assert!(st.last_push_bytes < total);
    assert_eq!(st.install_count, 0);
    assert!(!r.flasher.is_flashing("rshim0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exits_0_only_when_installed() {
    use clap::Parser;
    let Some(r) = rig(1) else { return };
    let bf_cfg = r.dir.path().join("bf.cfg");
    std::fs::write(&bf_cfg, "BFB_ADD_ON=\nubuntu_PASSWORD='$1$x$y'\n").unwrap();
    let argv = |extra: &[&str]| {
        let mut v = vec![
            "flash".to_string(),
            "--rshim=rshim0".into(),
            format!("--bfb={}", r.image.display()),
            format!("--bf-cfg={}", bf_cfg.display()),
            format!("--dev-root={}", r.sim.root().display()),
            format!("--cache-dir={}", r.dir.path().join("cache").display()),
            format!("--run-dir={}", r.dir.path().join("run").display()),
            "--poll-interval=20ms".into(),
            "--installer-timeout=1500ms".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        hostplane_agent::flash::cli::FlashArgs::try_parse_from(v).unwrap()
    };
    let run = |args| async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = hostplane_agent::flash::cli::run(
            args,
            "hostplane-agent flash",
            &mut out,
            &mut err,
            CancellationToken::new(),
        )
        .await;
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };

    let (code, out, err) = run(argv(&[])).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rshim0| INFO[MISC]: Found bf.cfg"), "{out}");
    assert!(
        out.contains("stage installer") && out.contains("installed and up"),
        "{out}"
    );
    assert!(!out.contains("$1$x$y"), "secret printed: {out}");

    r.sim.set_fault(0, Fault::InstallError);
    let (code, out, err) = run(argv(&[])).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("ERR[MISC]: Installation failed"), "{err}");

    r.sim.set_fault(0, Fault::Hang(hostplane_sim::Stage::Installer));
    let (code, _, err) = run(argv(&[])).await;
    assert_eq!(code, 1, "{err}");
    // One line, the device named once, the stage named is the one waited for.
    assert_eq!(
        err.trim(),
        "rshim0: flash FAILED in stage installer: timed out in stage installer after 1s 500ms \
         waiting for the installer to start",
    );
}
