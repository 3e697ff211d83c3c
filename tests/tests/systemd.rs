//! The systemd units and the daemons' sd-notify protocol.
//!
//! - `systemd-analyze verify` accepts both units (ExecStart pointed at the
//!   built binaries), and `systemd-analyze security --offline` rates the
//!   coordinator "OK" or better and the agent below 7 (the figures are
//!   printed for the record: 1.2 OK and 4.9 OK with systemd 252).
//! - The agent's unit sets no device list (DeviceAllow=, DevicePolicy=): the
//!   rshim CUSE devices have dynamic majors that a list resolved at unit start
//!   would block once re-created. Nor CAP_DAC_OVERRIDE: what it opens is root's.
//! - Each daemon, started with `NOTIFY_SOCKET` at a datagram socket this test
//!   reads and a watchdog period, sends READY=1 once it serves, WATCHDOG=1
//!   pings, and STOPPING=1 on SIGTERM.
//!
//! Skipped, saying why, where `systemd-analyze` is missing.
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostplane_tests::{bin, free_addr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn analyze_missing() -> Option<String> {
    match std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "systemd-analyze --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("systemd-analyze not found ({e})")),
    }
}

/// The units with ExecStart pointing at the built binaries, in a temp dir.
fn units_for_test(dir: &Path) -> Result<Vec<PathBuf>> {
    let bin_dir = bin("hostplane-coordinator")?.parent().unwrap().to_path_buf();
    let mut out = Vec::new();
    for name in ["hostplane-coordinator.service", "hostplane-agent.service"] {
        let text = std::fs::read_to_string(units_dir().join(name))?;
        let text = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let p = dir.join(name);
        std::fs::write(&p, text)?;
        out.push(p);
    }
    Ok(out)
}

#[test]
fn units_verify_and_the_coordinator_is_hardened() -> Result<()> {
    if let Some(why) = analyze_missing() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let units = units_for_test(dir.path())?;
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    let mut exposure = Vec::new();
    for u in &units {
        let o = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(u)
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .with_context(|| format!("no exposure level in: {text}"))?;
        // "→ Overall exposure level for x.service: 1.2 OK 🙂"
        let after = line.rsplit_once(": ").context("exposure format")?.1;
        let mut words = after.split_whitespace();
        let score: f64 = words.next().context("score")?.parse()?;
        let level = words.next().unwrap_or("").to_string();
        println!(
            "{}: exposure {score} {level}",
            u.file_name().unwrap().to_string_lossy()
        );
        exposure.push((score, level));
    }
    let (score, level) = &exposure[0];
    assert!(
        matches!(level.as_str(), "OK" | "SAFE" | "PERFECT"),
        "the coordinator needs no privilege: expected OK or better, got {score} {level}"
    );
    assert!(
        exposure[1].0 < 7.0,
        "the agent's exposure should stay MEDIUM or better: {:?}",
        exposure[1]
    );
    Ok(())
}

#[test]
fn the_agent_unit_sets_no_device_list_and_no_dac_override() -> Result<()> {
    let unit = std::fs::read_to_string(units_dir().join("hostplane-agent.service"))?;
    for line in unit.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        assert!(
            !line.starts_with("DeviceAllow=") && !line.starts_with("DevicePolicy="),
            "{line}: a device list resolved at unit start blocks rshim CUSE devices re-created under a new major"
        );
        if let Some(caps) = line.strip_prefix("CapabilityBoundingSet=") {
            assert!(
                !caps.contains("CAP_DAC_OVERRIDE"),
                "{line}: the agent runs as root and opens root's files only"
            );
            assert!(
                caps.contains("CAP_NET_ADMIN"),
                "{line}: netlink needs CAP_NET_ADMIN"
            );
        }
    }
    assert!(
        !unit.contains("PrivateDevices=yes"),
        "the agent needs the host's devices"
    );
    Ok(())
}

/// Read datagrams until one contains `what` (returns everything seen), or time out.
fn wait_for_message(sock: &UnixDatagram, what: &str, within: Duration, seen: &mut Vec<String>) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = m.lines().any(|l| l == what);
            seen.push(m);
            if hit {
                return Ok(());
            }
        }
    }
    bail!("no {what} within {within:?}; got {seen:?}")
}

/// Start `program args` under `sh` so WATCHDOG_PID can be the daemon's own pid
/// (`exec` keeps the shell's), with systemd's notify environment.
fn start_notified(program: &Path, args: &[&str], socket: &Path, log: &Path) -> Result<std::process::Child> {
    let mut cmd = format!("WATCHDOG_PID=$$ exec '{}'", program.display());
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let out = std::fs::File::create(log)?;
    Ok(std::process::Command::new("sh")
        .args(["-c", &cmd])
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "300000")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?)
}

fn check_daemon(name: &str, program: &Path, args: &[&str], dir: &Path) -> Result<()> {
    let socket = dir.join(format!("{name}.notify"));
    let sock = UnixDatagram::bind(&socket)?;
    let log = dir.join(format!("{name}.log"));
    let mut child = start_notified(program, args, &socket, &log)?;
    let mut seen = Vec::new();
    let r = (|| -> Result<()> {
        wait_for_message(&sock, "READY=1", Duration::from_secs(30), &mut seen)?;
        // Pings at half the 300 ms period: at least three in 1.5 s.
        let mut pings = 0;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until && pings < 3 {
            let mut s = Vec::new();
            wait_for_message(&sock, "WATCHDOG=1", Duration::from_secs(1), &mut s)?;
            pings += 1;
        }
        assert!(pings >= 3, "{name}: {pings} watchdog pings");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        wait_for_message(&sock, "STOPPING=1", Duration::from_secs(15), &mut seen)?;
        let status = child.wait()?;
        assert!(status.success(), "{name} exited {status} after SIGTERM");
        Ok(())
    })();
    if r.is_err() {
        let _ = child.kill();
        eprintln!(
            "--- {name} log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    r
}

#[test]
fn daemons_send_ready_watchdog_and_stopping() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listen = free_addr()?.to_string();
    let store = dir.path().join("coordinator.db");
    check_daemon(
        "coordinator",
        &bin("hostplane-coordinator")?,
        &[
            "run",
            "--insecure",
            "--listen",
            &listen,
            "--store",
            store.to_str().unwrap(),
        ],
        dir.path(),
    )?;
    let state = dir.path().join("agent-state");
    let cfg = dir.path().join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "node_name: n1\ncoordinator: http://{listen}\ninsecure: true\nstate_dir: {}\nnetwork:\n  enabled: false\n",
            state.display()
        ),
    )?;
    check_daemon(
        "agent",
        &bin("hostplane-agent")?,
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path(),
    )
}
