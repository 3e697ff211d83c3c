//! The simulator through a real FUSE mount, driven with plain file I/O as the
//! agent (or `cat`) does. Skipped (with a message) where /dev/fuse is missing.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostplane_sim::{Fault, Phase, SimConfig, SimHandle, Stage, Timings};

const STEP: Duration = Duration::from_millis(20);
const PATIENCE: Duration = Duration::from_secs(20);
const BF_CFG: &[u8] = b"# test\nBFB_ADD_ON=\nubuntu_PASSWORD='$1$x$y'\nbfb_modify_os() {\n  echo hi\n}\n";

/// Field order matters: unmount before the temp dir goes.
struct Mounted {
    sim: SimHandle,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn file(&self, dpu: usize, name: &str) -> PathBuf {
        self.sim.rshim_dir(dpu).join(name)
    }

    fn misc(&self, dpu: usize, cmd: &str) -> std::io::Result<()> {
        fs::write(self.file(dpu, "misc"), cmd)
    }

    fn read_misc(&self, dpu: usize) -> String {
        fs::read_to_string(self.file(dpu, "misc")).expect("read misc")
    }

    /// Set up the log reader as bfb-install does.
    fn watch_log(&self, dpu: usize) {
        self.misc(dpu, "CLEAR_ON_READ 1").unwrap();
        self.misc(dpu, "DISPLAY_LEVEL 2").unwrap();
    }

    /// Read misc (draining) until a log line contains `want`; returns all log lines seen.
    fn log_until(&self, dpu: usize, want: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let text = self.read_misc(dpu);
            let log = text
                .split_once("Log Messages\n")
                .expect("DISPLAY_LEVEL 2 shows the log")
                .1;
            seen.extend(log.lines().skip(1).map(str::to_string));
            if seen.iter().any(|l| l.contains(want)) {
                return seen;
            }
            assert!(Instant::now() < deadline, "no {want:?} in the log; saw {seen:#?}");
            std::thread::sleep(STEP);
        }
    }

    fn wait_history(&self, dpu: usize, want: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.sim.history(dpu).iter().any(|l| l.contains(want)) {
            assert!(
                Instant::now() < deadline,
                "no {want:?}: {:#?}",
                self.sim.history(dpu)
            );
            std::thread::sleep(STEP);
        }
    }

    fn wait_phase(&self, dpu: usize, phase: Phase) {
        let deadline = Instant::now() + PATIENCE;
        while self.sim.state(dpu).phase != phase {
            assert!(
                Instant::now() < deadline,
                "never {phase}: {:?}",
                self.sim.state(dpu)
            );
            std::thread::sleep(STEP);
        }
    }
}

fn mount_with(cfg: SimConfig) -> Option<Mounted> {
    let dir = tempfile::tempdir().unwrap();
    match hostplane_sim::mount(&dir.path().join("rshim"), cfg) {
        Ok(sim) => Some(Mounted { sim, _dir: dir }),
        Err(e) if e.is_fuse_unavailable() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("mount failed: {e}"),
    }
}

fn mount() -> Option<Mounted> {
    mount_with(SimConfig {
        dpus: 2,
        timings: Timings::uniform(STEP),
        ..SimConfig::default()
    })
}

fn test_bfb(size: u64, version: &str) -> Vec<u8> {
    let mut v = Vec::new();
    hostplane_bfb::write_test_bfb(&mut v, size, version, 11).unwrap();
    v
}

/// `cat bfb bf.cfg > boot`, with plain std::fs in 128 KiB writes as cat does.
fn push(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    for part in parts {
        for chunk in part.chunks(128 << 10) {
            f.write_all(chunk)?;
        }
    }
    Ok(())
}

fn position(log: &[String], needle: &str) -> usize {
    log.iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {log:#?}"))
}

#[test]
fn pushed_bfb_with_bf_cfg_installs_and_the_dpu_comes_up() {
    let Some(m) = mount() else { return };
    m.watch_log(0);
    let dir = tempfile::tempdir().unwrap();
    let bfb = dir.path().join("t.bfb");
    let cfg = dir.path().join("bf.cfg");
    fs::write(&bfb, test_bfb(3 << 20, "4.9.7")).unwrap();
    fs::write(&cfg, BF_CFG).unwrap();
    // Exactly what bfb-install runs.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$1" "$2" > "$3""#)
        .arg("sh")
        .args([&bfb, &cfg, &m.file(0, "boot")])
        .status()
        .unwrap();
    assert!(status.success());

    let log = m.log_until(0, "DPU is ready");
    let order = [
        " INFO[PSC]: PSC BL1 START",
        " INFO[BL2]: start",
        " INFO[BL2]: boot mode (rshim)",
        " INFO[BL31]: start",
        " INFO[UEFI]: exit Boot Service",
        " INFO[MISC]: Installing BFB version 4.9.7",
        " INFO[MISC]: Found bf.cfg",
        " INFO[MISC]: Ubuntu installation started",
        " INFO[MISC]: Ubuntu installation completed",
        " INFO[MISC]: Installation finished",
        " INFO[MISC]: Rebooting...",
        " INFO[MISC]: Linux up",
        " INFO[MISC]: DPU is ready",
    ];
    let at: Vec<usize> = order.iter().map(|l| position(&log, l)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "out of order: {log:#?}");
    assert!(!log.iter().any(|l| l.contains("ERR")), "{log:#?}");

    let s = m.sim.state(0);
    assert_eq!(s.phase, Phase::Up);
    assert_eq!(s.installed_version.as_deref(), Some("4.9.7"));
    assert_eq!(s.install_count, 1);
    assert_eq!(s.push_count, 1);
    assert_eq!(s.last_push_bytes, (3 << 20) + BF_CFG.len() as u64);
    assert!(!s.boot_open);
    // The other DPU saw nothing.
    assert_eq!(m.sim.state(1).push_count, 0);
    assert!(m.sim.history(1).is_empty());
    // Closing boot switched back to eMMC boot.
    assert!(m.read_misc(0).contains("BOOT_MODE       1 (0:rshim"));
    let console = fs::read_to_string(m.file(0, "console")).unwrap();
    assert!(console.contains("Linux up"), "{console}");
}

#[test]
fn corrupt_streams_log_an_error_and_never_boot() {
    let Some(m) = mount() else { return };
    let mut bad = test_bfb(1 << 20, "4.9.0");
    let n = bad.len();
    bad[n - 100] ^= 0x5a;
    m.watch_log(0);
    push(&m.file(0, "boot"), &[&bad, BF_CFG]).unwrap();
    let log = m.log_until(0, " ERR[");
    assert!(
        log.contains(&" ERR[BL2]: image 5 CRC mismatch".to_string()),
        "{log:#?}"
    );
    let s = m.sim.state(0);
    assert_eq!(s.phase, Phase::Failed, "a failed DPU runs no boot sequence");
    assert_eq!(s.last_error.as_deref(), Some("image 5 CRC mismatch"));
    std::thread::sleep(STEP * 10);
    let history = m.sim.history(0);
    assert!(
        !history
            .iter()
            .any(|l| l.contains("Linux up") || l.contains("BL31")),
        "{history:#?}"
    );
    assert_eq!(m.sim.state(0).installed_version.as_deref(), Some("4.8.0"));

    // Not a BFB at all, and a stream cut short.
    push(&m.file(1, "boot"), &[b"#!/bin/sh\necho this is not a BFB\n"]).unwrap();
    m.watch_log(1);
    let log = m.log_until(1, " ERR[");
    assert!(
        log.contains(&" ERR[BL2]: bad image header at offset 0".to_string()),
        "{log:#?}"
    );
    let good = test_bfb(1 << 20, "4.9.0");
    push(&m.file(1, "boot"), &[&good[..good.len() / 2]]).unwrap();
    let log = m.log_until(1, "truncated");
    assert!(
        log.iter().any(|l| l.starts_with(" ERR[BL2]: image 5 truncated")),
        "{log:#?}"
    );
    assert_eq!(m.sim.state(1).phase, Phase::Failed);
}

#[test]
fn corrupt_fault_flips_a_byte_of_a_valid_stream() {
    let Some(m) = mount() else { return };
    m.sim.set_fault(1, Fault::Corrupt);
    m.watch_log(1);
    push(&m.file(1, "boot"), &[&test_bfb(1 << 20, "4.9.0")]).unwrap();
    let log = m.log_until(1, " ERR[");
    assert_eq!(log.last().unwrap(), " ERR[BL2]: image 5 CRC mismatch");
    assert!(
        log.contains(&" INFO[BL2]: boot mode (rshim)".to_string()),
        "BL2 had started: {log:#?}"
    );
}

#[test]
fn a_second_writer_gets_ebusy_and_so_does_a_device_owned_elsewhere() {
    let Some(m) = mount() else { return };
    let boot = m.file(0, "boot");
    let first = OpenOptions::new().write(true).open(&boot).unwrap();
    let second = OpenOptions::new().write(true).open(&boot).unwrap_err();
    assert_eq!(second.raw_os_error(), Some(libc::EBUSY), "{second}");
    assert!(m.sim.state(0).boot_open);
    drop(first);
    // Closed: the next writer gets it.
    drop(OpenOptions::new().write(true).open(&boot).unwrap());

    // The BMC owns rshim1; .control is the run-time switch.
    fs::write(m.sim.root().join(".control"), "rshim1 fault busy\n").unwrap();
    let err = OpenOptions::new()
        .write(true)
        .open(m.file(1, "boot"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
    let status = fs::read_to_string(m.sim.root().join(".control")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("rshim1 ") && l.contains("fault=busy")),
        "{status}"
    );
    m.sim.set_fault(1, Fault::None);
    drop(OpenOptions::new().write(true).open(m.file(1, "boot")).unwrap());

    // Drop mode: EINVAL.
    m.misc(0, "DROP_MODE 1").unwrap();
    let err = OpenOptions::new().write(true).open(&boot).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    // boot is write-only.
    let err = File::open(&boot).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn misc_commands_and_errors() {
    let Some(m) = mount() else { return };
    for bad in ["NO_SUCH_KEY 1", "DISPLAY_LEVEL 9", "DROP_MODE x", "FORCE_CMD 1"] {
        let err = m.misc(0, bad).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad}: {err}");
    }
    let bad = fs::write(m.sim.root().join(".control"), "rshim7 fault busy").unwrap_err();
    assert_eq!(bad.raw_os_error(), Some(libc::EINVAL));

    let basic = m.read_misc(1);
    assert!(basic.contains("DEV_NAME        pcie-0000:05:00.2\n"), "{basic}");
    assert!(basic.contains("DEV_INFO        BlueField-3(Rev 1)\n"));
    assert!(!basic.contains("PEER_MAC"));
    m.misc(1, "DISPLAY_LEVEL 1").unwrap();
    m.misc(1, "VLAN_ID 7").unwrap();
    let advanced = m.read_misc(1);
    assert!(advanced.contains("VLAN_ID         7 0 (rw)\n"), "{advanced}");
    assert!(advanced.contains("CLEAR_ON_READ   0 (0:no, 1:yes)\n"));
    assert_eq!(
        m.read_misc(0).lines().count(),
        11,
        "rshim0 kept its own DISPLAY_LEVEL"
    );

    let mut names: Vec<String> = fs::read_dir(m.sim.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [".control", "rshim0", "rshim1"]);
    let mut files: Vec<String> = fs::read_dir(m.sim.rshim_dir(0))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["boot", "console", "misc"]);
}

#[test]
fn sw_reset_boots_the_installed_os_and_clear_on_read_drains() {
    let Some(m) = mount() else { return };
    m.misc(0, "SW_RESET 1").unwrap();
    m.wait_history(0, "DPU is ready");
    assert_eq!(m.sim.state(0).boot_count, 2, "preinstalled boot plus this one");
    m.misc(0, "DISPLAY_LEVEL 2").unwrap();
    // Without CLEAR_ON_READ every reader sees the same lines.
    let first = m.read_misc(0);
    assert!(first.contains(" INFO[BL2]: boot mode (emmc)\n"), "{first}");
    assert!(first.ends_with(" INFO[MISC]: DPU is ready\n"), "{first}");
    assert_eq!(m.read_misc(0), first);
    m.misc(0, "CLEAR_ON_READ 1").unwrap();
    assert!(m.read_misc(0).contains("DPU is ready"));
    let drained = m.read_misc(0);
    assert!(
        drained.ends_with("Log Messages\n---------------------------------------\n"),
        "{drained}"
    );
    // History is not drained.
    assert!(
        m.sim
            .history(0)
            .contains(&" INFO[MISC]: DPU is ready".to_string())
    );
}

#[test]
fn hang_fault_stops_the_log_before_the_stage() {
    let Some(m) = mount() else { return };
    m.sim.set_fault(0, Fault::Hang(Stage::Installer));
    m.watch_log(0);
    push(&m.file(0, "boot"), &[&test_bfb(1 << 20, "4.9.0"), BF_CFG]).unwrap();
    m.log_until(0, "exit Boot Service");
    m.wait_phase(0, Phase::Hung);
    std::thread::sleep(STEP * 10);
    let history = m.sim.history(0);
    assert_eq!(
        history.last().unwrap(),
        " INFO[UEFI]: exit Boot Service",
        "{history:#?}"
    );
    assert_eq!(m.sim.state(0).phase, Phase::Hung);
    // A reset gets it going again (the fault stays for the next push).
    m.sim.set_fault(0, Fault::None);
    m.sim.reset(0);
    m.wait_phase(0, Phase::Up);
}

#[test]
fn install_error_is_logged_and_then_the_old_os_boots() {
    let Some(m) = mount() else { return };
    m.sim.set_fault(1, Fault::InstallError);
    m.watch_log(1);
    push(&m.file(1, "boot"), &[&test_bfb(1 << 20, "5.0.0"), BF_CFG]).unwrap();
    let log = m.log_until(1, "DPU is ready");
    let started = position(&log, "Ubuntu installation started");
    let failed = position(&log, " ERR[MISC]: Installation failed");
    let up = position(&log, "Linux up");
    assert!(started < failed && failed < up, "{log:#?}");
    assert!(
        !log.iter().any(|l| l.contains("installation completed")),
        "{log:#?}"
    );
    let s = m.sim.state(1);
    assert_eq!(s.installed_version.as_deref(), Some("4.8.0"), "the old OS");
    assert_eq!(s.install_count, 0);
    assert_eq!(s.last_error.as_deref(), Some("Installation failed"));
}

#[test]
fn bad_bf_cfg_aborts_the_install() {
    let Some(m) = mount() else { return };
    m.watch_log(0);
    push(
        &m.file(0, "boot"),
        &[&test_bfb(1 << 20, "4.9.0"), b"this is not shell\n"],
    )
    .unwrap();
    let log = m.log_until(0, " ERR[");
    assert_eq!(log.last().unwrap(), " ERR[MISC]: bf.cfg syntax error");
    m.wait_phase(0, Phase::Failed);
    assert!(
        !m.sim
            .history(0)
            .iter()
            .any(|l| l.contains("installation started"))
    );
}

#[test]
fn panic_fault_prints_the_crash_and_the_dpu_stays_down() {
    let Some(m) = mount() else { return };
    m.sim.set_fault(0, Fault::Panic);
    m.watch_log(0);
    m.misc(0, "SW_RESET 1").unwrap();
    let log = m.log_until(0, "PANIC");
    assert!(
        log.iter().any(|l| l.starts_with(" PANIC(BL31): PC = 0x")),
        "{log:#?}"
    );
    m.wait_phase(0, Phase::Failed);
    let history = m.sim.history(0);
    assert!(
        history.last().unwrap().starts_with("   "),
        "register lines follow: {history:#?}"
    );
    assert!(!history.iter().any(|l| l.contains("Linux up")));
}

#[test]
fn slow_and_resetting_pushes_do_not_block_other_files() {
    let Some(m) = mount_with(SimConfig {
        dpus: 2,
        timings: Timings {
            reset: Duration::from_secs(2),
            ..Timings::uniform(STEP)
        },
        ..SimConfig::default()
    }) else {
        return;
    };
    // While rshim0's open of boot waits out the reset, misc still answers.
    let boot = m.file(0, "boot");
    let opener = std::thread::spawn(move || OpenOptions::new().write(true).open(boot).map(drop));
    m.wait_phase(0, Phase::Resetting);
    assert!(m.read_misc(1).contains("DEV_NAME"));
    assert!(
        m.read_misc(0).contains("BOOT_MODE       0 (0:rshim"),
        "reset into rshim boot"
    );
    assert_eq!(
        m.sim.state(0).phase,
        Phase::Resetting,
        "misc answered during the reset"
    );
    opener.join().unwrap().unwrap();

    // 192 KiB at 96 KiB/s takes at least 2 s; misc answers meanwhile.
    m.sim.set_fault(1, Fault::Slow(96 << 10));
    let data = test_bfb(192 << 10, "4.9.0");
    let boot = m.file(1, "boot");
    let started = Instant::now();
    let pusher = std::thread::spawn(move || push(&boot, &[&data]));
    m.wait_phase(1, Phase::Receiving);
    assert!(m.read_misc(1).contains("DEV_NAME"));
    assert!(
        !pusher.is_finished(),
        "misc was served while the throttled push ran"
    );
    pusher.join().unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn large_push_streams_in_constant_memory() {
    let Some(m) = mount() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bfb");
    let r = hostplane_sim::mkbfb(&path, 64 << 20, "4.9.9", 5, false).unwrap();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cat "$1" > "$2""#)
        .arg("sh")
        .args([&path, &m.file(1, "boot")])
        .status()
        .unwrap();
    assert!(status.success());
    m.wait_phase(1, Phase::Up);
    let s = m.sim.state(1);
    assert_eq!(s.last_push_bytes, r.bytes);
    assert_eq!(s.installed_version.as_deref(), Some("4.9.9"));
}

#[test]
fn a_boot_write_without_progress_for_boot_timeout_fails_with_etimedout() {
    let Some(m) = mount() else { return };
    // 100 B/s: the driver's first 16 KiB buffer would take 164 s to drain.
    m.sim.set_fault(0, Fault::Slow(100));
    m.misc(0, "BOOT_TIMEOUT 1").unwrap();
    assert!(m.read_misc(0).contains("BOOT_TIMEOUT    1 (seconds)"));
    let mut boot = OpenOptions::new().write(true).open(m.file(0, "boot")).unwrap();
    let t0 = Instant::now();
    let err = boot.write(&[0u8; 64 << 10]).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(m.sim.state(0).last_push_bytes, 0, "no byte of it was taken");
    drop(boot);

    // Fast enough to drain a buffer within BOOT_TIMEOUT: slow, but no timeout.
    m.sim.set_fault(0, Fault::Slow(64 << 10));
    let mut boot = OpenOptions::new().write(true).open(m.file(0, "boot")).unwrap();
    assert_eq!(boot.write(&[0u8; 32 << 10]).unwrap(), 32 << 10);
}
