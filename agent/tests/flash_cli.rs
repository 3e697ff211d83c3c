//! The real `hostplane-agent flash` binary (and the same binary as
//! `bfb-install`) against the DPU simulator mounted through FUSE: one flash
//! per rshim across processes, a reset under the installer, SIGTERM, a
//! stalled push, and bfb-install's command line. Skipped, with a message,
//! where /dev/fuse is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hostplane_sim::{Fault, Phase, SimConfig, SimHandle, Timings};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const AGENT: &str = env!("CARGO_BIN_EXE_hostplane-agent");
/// Generous bound for things that take well under a second here.
const PATIENCE: Duration = Duration::from_secs(30);

/// Field order matters: unmount before the temp dir goes.
struct Rig {
    sim: SimHandle,
    image: PathBuf,
    dir: tempfile::TempDir,
}

fn rig(install: Duration) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig {
        dpus: 1,
        timings: Timings {
            install,
            ..Timings::uniform(Duration::from_millis(20))
        },
        ..SimConfig::default()
    };
    let sim = match hostplane_sim::mount(&dir.path().join("dev"), cfg) {
        Ok(s) => s,
        Err(e) if e.is_fuse_unavailable() => {
            eprintln!("skipping: {e}");
            return None;
        }
        Err(e) => panic!("mounting the simulator: {e}"),
    };
    let image = dir.path().join("image.bfb");
    let mut f = std::fs::File::create(&image).unwrap();
    hostplane_bfb::write_test_bfb(&mut f, 1 << 20, "4.9.2", 3).unwrap();
    Some(Rig { sim, image, dir })
}

impl Rig {
    fn device(&self) -> PathBuf {
        self.sim.rshim_dir(0)
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// bfb-install's command line for this rig, plus hostplane's own options.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-r".into(),
            self.device().display().to_string(),
            "-b".into(),
            self.image.display().to_string(),
            format!("--run-dir={}", self.run_dir().display()),
            format!("--cache-dir={}", self.dir.path().join("cache").display()),
            "--poll-interval=20ms".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn flash(&self, extra: &[&str]) -> Child {
        spawn(Path::new(AGENT), Some("flash"), &self.args(extra))
    }

    fn misc(&self) -> String {
        std::fs::read_to_string(self.device().join("misc")).unwrap()
    }

    /// Wait until the DPU's console shows `line`.
    fn wait_console(&self, line: &str) {
        let t0 = Instant::now();
        while !std::fs::read_to_string(self.device().join("console"))
            .unwrap()
            .contains(line)
        {
            assert!(t0.elapsed() < PATIENCE, "never {line:?} on the console");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_phase(&self, phase: Phase) {
        let t0 = Instant::now();
        while self.sim.state(0).phase != phase {
            assert!(t0.elapsed() < PATIENCE, "never {phase}: {:?}", self.sim.state(0));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The misc values a flash changes are what they were before it.
    fn assert_misc_restored(&self) {
        let misc = self.misc();
        assert!(misc.contains("DISPLAY_LEVEL   0 "), "{misc}");
        assert!(misc.contains("BOOT_TIMEOUT    300 "), "{misc}");
        std::fs::write(self.device().join("misc"), "DISPLAY_LEVEL 1").unwrap();
        let misc = self.misc();
        std::fs::write(self.device().join("misc"), "DISPLAY_LEVEL 0").unwrap();
        assert!(misc.contains("CLEAR_ON_READ   0 "), "{misc}");
    }

    /// The flash lock of rshim0 is free.
    fn assert_unlocked(&self) {
        let path = hostplane_agent::flash::lock_file(&self.run_dir(), &self.device());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.try_lock().expect("the flash lock was released");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}

fn spawn(prog: &Path, sub: Option<&str>, args: &[String]) -> Child {
    let mut c = Command::new(prog);
    c.args(sub).args(args);
    c.env_remove("HOSTPLANE_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child` at most `limit`; None if it still runs.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(child: &mut Child) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (out, err)
}

/// Wait for an exit that must come within `limit`. If it does not, the FUSE
/// connection is aborted (so a process stuck in a device write goes) before
/// the test fails: the test never hangs.
fn must_exit(rig: &Rig, child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, String, String) {
    match wait_for(child, limit) {
        Some(s) => {
            let (o, e) = output(child);
            (s, o, e)
        }
        None => {
            let _ = child.kill();
            abort_fuse(rig.sim.root());
            let _ = wait_for(child, PATIENCE);
            let (o, e) = output(child);
            panic!("{what}: still running after {limit:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
    }
}

/// Abort the FUSE connection of the mount at `root` (fails every pending
/// request): the way out for a process stuck in the kernel on it.
fn abort_fuse(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(root) else { return };
    let conn = format!("/sys/fs/fuse/connections/{}", nix::sys::stat::minor(m.dev()));
    if !Path::new(&conn).exists() {
        // fusectl not mounted (a container): mount it (root only).
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"])
            .status();
    }
    let _ = std::fs::write(format!("{conn}/abort"), "1");
}

#[test]
fn a_second_flash_from_another_process_is_refused_naming_the_first() {
    let Some(r) = rig(Duration::from_secs(3)) else {
        return;
    };
    let mut a = r.flash(&[]);
    r.wait_phase(Phase::Installing);
    let mut b = r.flash(&[]);
    let (status, _, err) = must_exit(&r, &mut b, PATIENCE, "second flash");
    assert_eq!(status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!("pid {} flashing {}", a.id(), r.image.display())),
        "{err}"
    );
    assert!(
        err.starts_with("rshim0: flash FAILED in stage device: busy: "),
        "{err}"
    );
    let (status, out, err) = must_exit(&r, &mut a, PATIENCE, "first flash");
    assert!(status.success(), "{out}\n{err}");
    assert_eq!(
        r.sim.state(0).push_count,
        1,
        "the second flash never reset the DPU"
    );
    r.assert_unlocked();
}

#[test]
fn a_reset_under_the_installer_fails_the_flash_at_once() {
    // The installation would take 10 minutes; the flash must not wait for it.
    let Some(r) = rig(Duration::from_secs(600)) else {
        return;
    };
    let mut a = r.flash(&[]);
    r.wait_console("Ubuntu installation started");
    // Another tool that takes no lock (NVIDIA's bfb-install) pushes an image.
    std::fs::write(r.device().join("boot"), std::fs::read(&r.image).unwrap()).unwrap();
    let (status, _, err) = must_exit(&r, &mut a, PATIENCE, "flash after a foreign reset");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("rshim0: flash FAILED in stage installer: the DPU was reset during stage installer"),
        "{err}"
    );
    r.assert_misc_restored();
}

#[test]
fn sigterm_stops_the_flash_restores_misc_and_releases_the_lock() {
    let Some(r) = rig(Duration::from_secs(600)) else {
        return;
    };
    let mut a = r.flash(&[]);
    r.wait_phase(Phase::Installing);
    kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM).unwrap();
    let (status, _, err) = must_exit(&r, &mut a, PATIENCE, "flash after SIGTERM");
    assert_eq!(status.code(), Some(143), "{status:?}: {err}");
    assert!(
        err.contains("rshim0: flash FAILED in stage install")
            && err.contains(": flash cancelled in stage install")
            && err.contains("hostplane-agent flash: interrupted by SIGTERM"),
        "{err}"
    );
    r.assert_misc_restored();
    r.assert_unlocked();
}

#[test]
fn sigterm_ends_a_flash_stalled_in_the_push() {
    let Some(r) = rig(Duration::from_millis(20)) else {
        return;
    };
    // 100 B/s: a write of the boot stream does not complete for hours.
    r.sim.set_fault(0, Fault::Slow(100));
    let mut a = r.flash(&["--push-stall-timeout=3s"]);
    r.wait_phase(Phase::Receiving);
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    let (status, _, err) = must_exit(&r, &mut a, Duration::from_secs(20), "stalled flash after SIGTERM");
    assert_eq!(status.code(), Some(143), "{status:?}: {err}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    r.sim.set_fault(0, Fault::None);
    r.assert_misc_restored();
    r.assert_unlocked();
}

#[test]
fn a_stalled_push_fails_naming_the_drivers_boot_timeout() {
    let Some(r) = rig(Duration::from_millis(20)) else {
        return;
    };
    r.sim.set_fault(0, Fault::Slow(100));
    let mut a = r.flash(&["--push-stall-timeout=2s"]);
    let (status, _, err) = must_exit(&r, &mut a, Duration::from_secs(20), "stalled flash");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("rshim0: flash FAILED in stage push: push to ")
            && err.contains("ETIMEDOUT: the device accepted no data for the driver's BOOT_TIMEOUT (2 s)"),
        "{err}"
    );
    r.sim.set_fault(0, Fault::None);
    r.assert_misc_restored();
}

#[test]
fn bfb_install_and_hostplane_agent_flash_take_the_same_command_lines() {
    let Some(r) = rig(Duration::from_millis(20)) else {
        return;
    };
    let bin = r.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let bfb_install = bin.join("bfb-install");
    std::os::unix::fs::symlink(AGENT, &bfb_install).unwrap();
    let cfg = |name: &str, text: &str| {
        let p = r.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let good = cfg("good.cfg", "BFB_ADD_ON=\nbfb_modify_os() {\n  echo hi\n}\n");
    let open_quote = cfg("quote.cfg", "A=1\nubuntu_PASSWORD='abc\n");
    let command = cfg("command.cfg", "A=1\nreboot\n");
    let empty = cfg("empty.cfg", "");

    // (extra arguments, exit code, what stderr (or stdout for 0) says)
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["-c", &good, "-v"], 0, "installed and up"),
        (vec!["-k"], 64, "-k/--keep-log is not supported"),
        (vec!["--keep-log"], 64, "-k/--keep-log is not supported"),
        (vec!["-a", "1"], 64, "-a/--apply-lfwp is not supported"),
        (vec!["-p", "fw.pldm"], 64, "-p/--pldm is not supported"),
        (vec!["-R"], 64, "-R/--reverse-nc is not supported"),
        (vec!["-u"], 64, "-u/--runtime is not supported"),
        (vec!["-d"], 64, "-d/--deferred is not supported"),
        (
            vec!["-m", "scp"],
            64,
            "a remote mode applies only to a remote rshim",
        ),
        (vec!["-c", &open_quote], 64, "line 2: unterminated single quote"),
        (
            vec!["-c", &command],
            64,
            "line 2: not an assignment (NAME=value) or a function: \"reboot\"",
        ),
        (vec!["-c", &empty], 64, "is empty"),
        (
            vec!["-f", "/nonexistent/rootfs"],
            64,
            "--rootfs /nonexistent/rootfs",
        ),
        (vec!["unexpected"], 64, "unexpected argument"),
    ];
    for (extra, code, says) in &cases {
        let pushes = r.sim.state(0).push_count;
        let mut seen = Vec::new();
        for (prog, sub) in [(bfb_install.as_path(), None), (Path::new(AGENT), Some("flash"))] {
            let mut c = spawn(prog, sub, &r.args(extra));
            let (status, out, err) = must_exit(&r, &mut c, Duration::from_secs(60), "flash");
            assert_eq!(status.code(), Some(*code), "{prog:?} {extra:?}\n{out}\n{err}");
            let text = if *code == 0 { &out } else { &err };
            assert!(text.contains(says), "{prog:?} {extra:?}: {text}");
            for l in out.lines().chain(err.lines()) {
                assert!(l.matches("rshim0").count() <= 1, "the device named twice: {l}");
            }
            // The same words from both spellings, but for the program's name.
            seen.push(
                err.replace("hostplane-agent flash", "PROG")
                    .replace("bfb-install", "PROG"),
            );
        }
        assert_eq!(seen[0], seen[1], "{extra:?}");
        if *code != 0 {
            assert_eq!(r.sim.state(0).push_count, pushes, "{extra:?}: the DPU was reset");
        }
    }
    // A remote rshim, and -h with the exit codes.
    for (prog, sub) in [(bfb_install.as_path(), None), (Path::new(AGENT), Some("flash"))] {
        let mut c = spawn(
            prog,
            sub,
            &["-r".into(), "10.0.0.2:rshim0".into(), "-b".into(), "x".into()],
        );
        let (status, _, err) = must_exit(&r, &mut c, PATIENCE, "remote");
        assert_eq!(status.code(), Some(64), "{err}");
        assert!(err.contains("a remote rshim"), "{err}");
        let mut c = spawn(prog, sub, &["-h".into()]);
        let (status, out, _) = must_exit(&r, &mut c, PATIENCE, "help");
        assert!(status.success());
        for needle in [
            "-b, --bfb",
            "-r, --rshim",
            "-c, --config",
            "-f, --rootfs",
            "-m, --remote-mode",
            "Exit codes:",
            "75",
        ] {
            assert!(out.contains(needle), "{prog:?} -h lacks {needle:?}:\n{out}");
        }
    }
}
