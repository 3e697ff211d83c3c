//! The deb and rpm packages (`scripts/package`).
//!
//! Builds all four packages from the built debug binaries (stripped, fast
//! compression: `--fast`; the release packages come from the same script),
//! requires `lintian` and `rpmlint` to report no error (with the overrides in
//! packaging/), checks the rpms' contents, runs their scriptlets with stub
//! `systemctl`/`useradd`/`groupadd` for each `$1` rpm passes, then installs both
//! debs on this machine with `dpkg -i` and checks the files, the conffiles,
//! the `hostplane` system user, the shipped configs (refused until TLS is set,
//! valid with their `tls:` block enabled and lab certificates from the
//! installed hostplanectl), the units enabled but not started, an upgrade
//! (reinstall) keeping an edited conffile, and `dpkg --purge` removing
//! everything but the user (kept, as Debian policy advises; the test deletes
//! it afterwards if it created it).
//!
//! Skipped, saying why, when a tool is missing (scripts/setup installs them),
//! and the install part when not root, when a hostplane package is already
//! installed here, or when /etc/hostplane, the state directories or the
//! binaries in /usr/bin already exist (the purge would delete them). A guard
//! purges the packages even when a check fails.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use hostplane_tests::bin;

const UNITS: [&str; 2] = ["hostplane-agent.service", "hostplane-coordinator.service"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))
}

/// Run and require success; returns stdout.
fn ok(program: &str, args: &[&str]) -> Result<String> {
    let o = run(program, args)?;
    if !o.status.success() {
        bail!(
            "{program} {} failed ({}):\n{}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

struct Built {
    agent_deb: PathBuf,
    coordinator_deb: PathBuf,
    rpms: Vec<PathBuf>,
}

fn build(out: &Path) -> Result<Built> {
    let bin_dir = bin("hostplane-agent")?.parent().unwrap().to_path_buf();
    bin("hostplanectl")?;
    bin("hostplane-coordinator")?;
    let script = repo().join("scripts/package");
    let printed = ok(
        script.to_str().unwrap(),
        &[
            "--profile",
            "debug",
            "--no-build",
            "--fast",
            "--bin-dir",
            bin_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )?;
    let files: Vec<PathBuf> = printed.lines().map(PathBuf::from).collect();
    for f in &files {
        let size =
            std::fs::metadata(f).with_context(|| format!("{} was printed but not written", f.display()))?;
        println!(
            "{}: {:.1} MB",
            f.file_name().unwrap().to_string_lossy(),
            size.len() as f64 / 1e6
        );
    }
    let find = |prefix: &str, ext: &str| -> Result<PathBuf> {
        files
            .iter()
            .find(|f| {
                let n = f.file_name().unwrap().to_string_lossy();
                n.starts_with(prefix) && n.ends_with(ext)
            })
            .cloned()
            .with_context(|| format!("no {prefix}*{ext} in {files:?}"))
    };
    Ok(Built {
        agent_deb: find("hostplane-agent_0.1.0-1_", ".deb")?,
        coordinator_deb: find("hostplane-coordinator_0.1.0-1_", ".deb")?,
        rpms: vec![
            find("hostplane-agent-0.1.0-1.", ".rpm")?,
            find("hostplane-coordinator-0.1.0-1.", ".rpm")?,
        ],
    })
}

fn lint(b: &Built) -> Result<()> {
    let o = run(
        "lintian",
        &[
            "--tag-display-limit",
            "0",
            b.agent_deb.to_str().unwrap(),
            b.coordinator_deb.to_str().unwrap(),
        ],
    )?;
    let said = String::from_utf8_lossy(&o.stdout);
    println!("lintian:\n{said}");
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    ensure!(
        errors.is_empty() && o.status.success(),
        "lintian errors ({}): {errors:#?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );

    let rc = repo().join("packaging/rpm/hostplane.rpmlintrc");
    let mut args = vec!["-r", rc.to_str().unwrap()];
    args.extend(b.rpms.iter().map(|p| p.to_str().unwrap()));
    let o = run("rpmlint", &args)?;
    let said = String::from_utf8_lossy(&o.stdout);
    println!("rpmlint:\n{said}");
    ensure!(
        o.status.success() && said.contains(" 0 errors"),
        "rpmlint reports errors ({}):\n{said}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

fn check_rpms(b: &Built) -> Result<()> {
    let (agent, coord) = (b.rpms[0].to_str().unwrap(), b.rpms[1].to_str().unwrap());
    let files = ok("rpm", &["-qlp", agent])?;
    for f in [
        "/usr/bin/hostplane-agent",
        "/usr/lib/systemd/system/hostplane-agent.service",
        "/etc/hostplane/agent.yaml",
    ] {
        ensure!(
            files.lines().any(|l| l == f),
            "{f} not in the agent rpm:\n{files}"
        );
    }
    let files = ok("rpm", &["-qlp", coord])?;
    for f in [
        "/usr/bin/hostplane-coordinator",
        "/usr/bin/hostplanectl",
        "/usr/lib/systemd/system/hostplane-coordinator.service",
        "/usr/lib/sysusers.d/hostplane.conf",
        "/etc/hostplane/coordinator.yaml",
    ] {
        ensure!(
            files.lines().any(|l| l == f),
            "{f} not in the coordinator rpm:\n{files}"
        );
    }
    ensure!(ok("rpm", &["-qpc", agent])?.trim() == "/etc/hostplane/agent.yaml");
    ensure!(ok("rpm", &["-qpc", coord])?.trim() == "/etc/hostplane/coordinator.yaml");
    let scripts = ok("rpm", &["-qp", "--scripts", coord])?;
    for what in [
        "useradd -r -g hostplane",
        "preset hostplane-coordinator.service",
        "disable --now hostplane-coordinator.service",
        "try-restart hostplane-coordinator.service",
    ] {
        ensure!(
            scripts.contains(what),
            "coordinator rpm scriptlets lack `{what}`:\n{scripts}"
        );
    }
    ensure!(
        !scripts.contains("systemctl start"),
        "an rpm scriptlet starts the service:\n{scripts}"
    );
    Ok(())
}

/// Runs one rpm scriptlet (`tag`: PREIN, POSTIN, PREUN, POSTUN) with `arg` as
/// `$1` (rpm passes the number of instances left), with `systemctl`,
/// `useradd`, `groupadd` and `getent` replaced by stubs that log their
/// arguments (`getent` finds nothing); returns the logged calls.
fn scriptlet_calls(rpm: &Path, tag: &str, arg: &str, dir: &Path) -> Result<Vec<String>> {
    let body = ok(
        "rpm",
        &["-qp", "--qf", &format!("%{{{tag}}}"), rpm.to_str().unwrap()],
    )?;
    if body.trim() == "(none)" {
        return Ok(Vec::new());
    }
    let stubs = dir.join("stubs");
    let log = dir.join("calls.log");
    std::fs::create_dir_all(&stubs)?;
    for (name, rc) in [("systemctl", 0), ("useradd", 0), ("groupadd", 0), ("getent", 2)] {
        let stub = stubs.join(name);
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {rc}\n",
                log.display()
            ),
        )?;
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let _ = std::fs::remove_file(&log);
    let path = format!(
        "{}:{}",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("sh")
        .args(["-c", &body, "sh", arg])
        .env("PATH", path)
        .output()?;
    ensure!(
        o.status.success(),
        "{} {tag} {arg} failed: {}",
        rpm.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect())
}

/// The scriptlets do what the systemd rpm macros do, for each `$1`.
fn check_rpm_scriptlets(b: &Built) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    for (rpm, unit) in [(&b.rpms[0], UNITS[0]), (&b.rpms[1], UNITS[1])] {
        let calls = |tag: &str, arg: &str| scriptlet_calls(rpm, tag, arg, dir.path());
        // First install: the preset (enable), nothing started.
        ensure!(calls("POSTIN", "1")? == vec![format!("systemctl --no-reload preset {unit}")]);
        // Upgrade: no preset again (an admin's disable stays).
        ensure!(calls("POSTIN", "2")?.is_empty());
        // Erase: disabled and stopped; upgrade: untouched.
        ensure!(calls("PREUN", "0")? == vec![format!("systemctl --no-reload disable --now {unit}")]);
        ensure!(calls("PREUN", "1")?.is_empty());
        // After an upgrade: reload and try-restart, only under a running systemd.
        let after_upgrade = calls("POSTUN", "1")?;
        let expected: Vec<String> = if systemd_runs {
            vec![
                "systemctl daemon-reload".into(),
                format!("systemctl try-restart {unit}"),
            ]
        } else {
            Vec::new()
        };
        ensure!(after_upgrade == expected, "{unit} %postun 1: {after_upgrade:?}");
        let after_erase = calls("POSTUN", "0")?;
        ensure!(
            after_erase.iter().all(|c| c == "systemctl daemon-reload"),
            "{after_erase:?}"
        );
    }
    // The coordinator's user: created when getent does not find it.
    let pre = scriptlet_calls(&b.rpms[1], "PREIN", "1", dir.path())?;
    ensure!(
        pre.len() == 4
            && pre[1] == "groupadd -r hostplane"
            && pre[3]
                .starts_with("useradd -r -g hostplane -d /var/lib/hostplane-coordinator -M -s /sbin/nologin"),
        "coordinator %pre: {pre:?}"
    );
    ensure!(scriptlet_calls(&b.rpms[0], "PREIN", "1", dir.path())?.is_empty());
    Ok(())
}

/// `text` with the commented-out `#tls:` block enabled.
fn enable_block(text: &str, key: &str) -> String {
    let mut in_block = false;
    let mut out = String::new();
    for line in text.lines() {
        if line == format!("#{key}:") {
            in_block = true;
        } else if in_block && !line.starts_with("#  ") {
            in_block = false;
        }
        out.push_str(if in_block { &line[1..] } else { line });
        out.push('\n');
    }
    out
}

/// The installed configs: as shipped, both daemons refuse to start until TLS
/// (or `insecure`) is set, naming it; with their `tls:` block enabled and the
/// certificates the installed hostplanectl makes, the agent is valid and the
/// coordinator asks for admin tokens; with its `auth:` block enabled and a
/// tokens file from `hostplanectl token create`, it is valid too.
fn check_shipped_configs() -> Result<()> {
    for (daemon, cfg) in [
        ("hostplane-coordinator", "coordinator.yaml"),
        ("hostplane-agent", "agent.yaml"),
    ] {
        let o = run(
            &format!("/usr/bin/{daemon}"),
            &["validate", "--config", &format!("/etc/hostplane/{cfg}")],
        )?;
        let said = String::from_utf8_lossy(&o.stderr);
        ensure!(
            o.status.code() == Some(78) && said.contains("tls"),
            "{daemon} validate on the shipped {cfg}: expected 78 naming tls, got {} {said}",
            o.status
        );
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_str().unwrap();
    let ctl = "/usr/bin/hostplanectl";
    ok(ctl, &["certs", "ca", "--out", d])?;
    ok(
        ctl,
        &["certs", "server", "--ca", d, "--name", "localhost", "--out", d],
    )?;
    ok(
        ctl,
        &["certs", "agent", "--ca", d, "--node", "pkg-test", "--out", d],
    )?;
    for (daemon, cfg) in [
        ("hostplane-coordinator", "coordinator.yaml"),
        ("hostplane-agent", "agent.yaml"),
    ] {
        let text = std::fs::read_to_string(format!("/etc/hostplane/{cfg}"))?;
        let text = enable_block(&text, "tls")
            .replace("/etc/hostplane/tls/agent.", &format!("{d}/agent-pkg-test."))
            .replace("/etc/hostplane/tls/", &format!("{d}/"));
        ensure!(
            text.contains(&format!("{d}/ca.crt")),
            "no tls block enabled in {cfg}:\n{text}"
        );
        let edited = dir.path().join(cfg);
        let validate = |text: &str| -> Result<std::process::Output> {
            std::fs::write(&edited, text)?;
            Ok(Command::new(format!("/usr/bin/{daemon}"))
                .args(["validate", "--config", edited.to_str().unwrap()])
                .env("HOSTPLANE_NODE_NAME", "pkg-test")
                .output()?)
        };
        let text = if daemon == "hostplane-coordinator" {
            let o = validate(&text)?;
            let said = String::from_utf8_lossy(&o.stderr);
            ensure!(
                o.status.code() == Some(78) && said.contains("auth.tokens_file is not set"),
                "coordinator validate with tls but no tokens: {} {said}",
                o.status
            );
            let tokens = format!("{d}/tokens.yaml");
            let token = ok(
                ctl,
                &[
                    "token",
                    "create",
                    "pkg-admin",
                    "--role",
                    "admin",
                    "--tokens-file",
                    &tokens,
                ],
            )?;
            ensure!(
                token.trim().len() == 64,
                "hostplanectl token create printed {token:?}"
            );
            enable_block(&text, "auth")
                .replace("/etc/hostplane/tokens.yaml", &tokens)
                .replace(
                    "/var/lib/hostplane-coordinator/audit.jsonl",
                    &format!("{d}/audit.jsonl"),
                )
        } else {
            text
        };
        let o = validate(&text)?;
        ensure!(
            o.status.success(),
            "{daemon} validate on {cfg} with its tls block enabled: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Purges the packages (and the user, if this test created it) when dropped,
/// so a failed check leaves the machine as it was.
struct Installed {
    user_existed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "hostplane-agent", "hostplane-coordinator"]);
        if !self.user_existed {
            let _ = run("userdel", &["hostplane"]);
            let _ = run("groupdel", &["hostplane"]);
        }
    }
}

fn user_exists() -> bool {
    run("getent", &["passwd", "hostplane"]).is_ok_and(|o| o.status.success())
}

fn package_installed(pkg: &str) -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim().ends_with(" installed"))
}

/// Pids of running processes whose executable is `exe`.
fn running(exe: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == Path::new(exe)))
        .collect()
}

fn same_file(installed: &str, source: &Path) -> Result<()> {
    let a = std::fs::read(installed).with_context(|| format!("{installed} was not installed"))?;
    let b = std::fs::read(source)?;
    ensure!(a == b, "{installed} differs from {}", source.display());
    Ok(())
}

fn install_and_purge(b: &Built) -> Result<()> {
    let guard = Installed {
        user_existed: user_exists(),
    };
    ok(
        "dpkg",
        &[
            "-i",
            b.agent_deb.to_str().unwrap(),
            b.coordinator_deb.to_str().unwrap(),
        ],
    )?;
    ensure!(package_installed("hostplane-agent") && package_installed("hostplane-coordinator"));

    // Files: binaries that run, the units and configs as shipped.
    for exe in ["hostplane-agent", "hostplane-coordinator", "hostplanectl"] {
        let v = ok(&format!("/usr/bin/{exe}"), &["--version"])?;
        ensure!(v.contains("0.1.0"), "/usr/bin/{exe} --version: {v}");
    }
    for unit in UNITS {
        same_file(
            &format!("/usr/lib/systemd/system/{unit}"),
            &repo().join("systemd").join(unit),
        )?;
    }
    for cfg in ["agent.yaml", "coordinator.yaml"] {
        same_file(
            &format!("/etc/hostplane/{cfg}"),
            &repo().join("packaging/config").join(cfg),
        )?;
    }
    for (pkg, cfg) in [
        ("hostplane-agent", "agent.yaml"),
        ("hostplane-coordinator", "coordinator.yaml"),
    ] {
        let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", pkg])?;
        ensure!(
            conffiles.contains(&format!("/etc/hostplane/{cfg} ")),
            "{pkg} conffiles: {conffiles}"
        );
        ok("dpkg", &["--verify", pkg])?;
    }

    check_shipped_configs()?;

    // The coordinator's system user.
    let pw = ok("getent", &["passwd", "hostplane"])?;
    let fields: Vec<&str> = pw.trim().split(':').collect();
    ensure!(fields.len() == 7, "getent passwd hostplane: {pw}");
    let uid: u32 = fields[2].parse()?;
    ensure!(uid < 1000, "hostplane is not a system user (uid {uid})");
    ensure!(fields[5] == "/var/lib/hostplane-coordinator", "home: {pw}");
    ensure!(fields[6].ends_with("nologin"), "shell: {pw}");
    ok("getent", &["group", "hostplane"])?;

    // Enabled (the multi-user.target.wants symlink), not started.
    for unit in UNITS {
        let link = PathBuf::from("/etc/systemd/system/multi-user.target.wants").join(unit);
        let target =
            std::fs::read_link(&link).with_context(|| format!("{unit} is not enabled: no {link:?}"))?;
        ensure!(target.ends_with(unit), "{link:?} -> {target:?}");
        if have("systemctl") {
            let state = run("systemctl", &["is-enabled", unit])?;
            let state = String::from_utf8_lossy(&state.stdout);
            ensure!(state.trim() == "enabled", "systemctl is-enabled {unit}: {state}");
        }
    }
    for exe in ["/usr/bin/hostplane-agent", "/usr/bin/hostplane-coordinator"] {
        let pids = running(exe);
        ensure!(pids.is_empty(), "{exe} was started on install: pids {pids:?}");
    }

    // An upgrade (here: the same version again) keeps an edited conffile and
    // runs the maintainer scripts' upgrade path without a running systemd.
    let edited = "# edited by the admin\ncoordinator: http://coord.example:50051\n";
    std::fs::write("/etc/hostplane/agent.yaml", edited)?;
    ok("dpkg", &["-i", b.agent_deb.to_str().unwrap()])?;
    ensure!(
        std::fs::read_to_string("/etc/hostplane/agent.yaml")? == edited,
        "the upgrade replaced an edited conffile"
    );
    ensure!(Path::new("/etc/systemd/system/multi-user.target.wants/hostplane-agent.service").exists());

    // State the daemons would have written (systemd's StateDirectory).
    for dir in ["/var/lib/hostplane-agent", "/var/lib/hostplane-coordinator"] {
        std::fs::create_dir_all(dir)?;
        std::fs::write(format!("{dir}/state"), "x")?;
    }

    ok("dpkg", &["--purge", "hostplane-agent", "hostplane-coordinator"])?;
    ensure!(!package_installed("hostplane-agent") && !package_installed("hostplane-coordinator"));
    let mut left = Vec::new();
    for p in [
        "/usr/bin/hostplane-agent",
        "/usr/bin/hostplane-coordinator",
        "/usr/bin/hostplanectl",
        "/usr/lib/systemd/system/hostplane-agent.service",
        "/usr/lib/systemd/system/hostplane-coordinator.service",
        "/etc/hostplane",
        "/var/lib/hostplane-agent",
        "/var/lib/hostplane-coordinator",
        "/usr/share/doc/hostplane-agent",
        "/usr/share/doc/hostplane-coordinator",
        "/etc/systemd/system/multi-user.target.wants/hostplane-agent.service",
        "/etc/systemd/system/multi-user.target.wants/hostplane-coordinator.service",
        "/etc/systemd/system/hostplane-agent.service",
        "/etc/systemd/system/hostplane-coordinator.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/hostplane-agent.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/hostplane-coordinator.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-masked/hostplane-agent.service",
        "/var/lib/systemd/deb-systemd-helper-masked/hostplane-coordinator.service",
    ] {
        if std::fs::symlink_metadata(p).is_ok() {
            left.push(p);
        }
    }
    ensure!(left.is_empty(), "dpkg --purge left {left:?}");
    // Debian policy: a package does not delete its system user on purge.
    ensure!(user_exists(), "the hostplane user was deleted on purge");
    println!("installed, checked and purged both debs; the hostplane user stays (Debian policy)");
    drop(guard);
    Ok(())
}

#[test]
fn packages_build_lint_install_and_purge() -> Result<()> {
    let missing: Vec<&str> = [
        "dpkg-deb",
        "dpkg-shlibdeps",
        "rpmbuild",
        "rpm",
        "lintian",
        "rpmlint",
        "strip",
    ]
    .into_iter()
    .filter(|t| !have(t))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED: {} not installed (scripts/setup installs them on Debian)",
            missing.join(", ")
        );
        return Ok(());
    }
    let out = tempfile::tempdir()?;
    let built = build(out.path())?;
    lint(&built)?;
    check_rpms(&built)?;
    check_rpm_scriptlets(&built)?;

    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the install: dpkg -i needs root");
        return Ok(());
    }
    if !have("dpkg") || !have("deb-systemd-helper") {
        eprintln!("SKIPPED the install: dpkg or deb-systemd-helper missing (not a Debian system)");
        return Ok(());
    }
    if package_installed("hostplane-agent") || package_installed("hostplane-coordinator") {
        eprintln!("SKIPPED the install: a hostplane package is installed here; the test will not replace it");
        return Ok(());
    }
    // The purge deletes these: never on a machine where they hold someone's files.
    let present: Vec<&str> = [
        "/etc/hostplane",
        "/var/lib/hostplane-agent",
        "/var/lib/hostplane-coordinator",
        "/usr/bin/hostplane-agent",
        "/usr/bin/hostplane-coordinator",
        "/usr/bin/hostplanectl",
    ]
    .into_iter()
    .filter(|p| std::fs::symlink_metadata(p).is_ok())
    .collect();
    if !present.is_empty() {
        eprintln!("SKIPPED the install: {present:?} exist here and a purge would delete them");
        return Ok(());
    }
    install_and_purge(&built)
}
