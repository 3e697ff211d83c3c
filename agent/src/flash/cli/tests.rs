//! The flash CLI: parsing (both spellings), refusals, exit codes.

use clap::Parser;

use super::args::rshim_target;
use super::*;
use crate::flash::FlashConfig;
use std::path::PathBuf;

fn parse(extra: &[&str]) -> FlashArgs {
    let mut argv = vec!["flash"];
    argv.extend_from_slice(extra);
    FlashArgs::try_parse_from(argv).unwrap()
}

async fn exit(args: FlashArgs) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(
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
}

#[test]
fn defaults_match_the_engine() {
    let a = parse(&["--rshim", "rshim0", "--bfb", "x.bfb"]);
    assert_eq!(a.flash_config(PathBuf::from("/dev")), FlashConfig::default());
    assert_eq!(
        rshim_target(&a).unwrap(),
        ("rshim0".into(), PathBuf::from("/dev"))
    );
    assert_eq!(a.cache_dir, Path::new("/var/lib/hostplane-agent/cache"));
    let a = parse(&[
        "--rshim",
        "rshim0",
        "--bfb",
        "x",
        "--install-timeout",
        "90m",
        "--poll-interval",
        "200ms",
    ]);
    assert_eq!(a.install_timeout, Duration::from_secs(5400));
    assert_eq!(a.poll_interval, Duration::from_millis(200));
    assert!(FlashArgs::try_parse_from(["flash", "--rshim", "rshim0"]).is_err());
    // bfb-install's spellings.
    let a = parse(&[
        "-r",
        "/dev/rshim3",
        "-b",
        "x.bfb",
        "-c",
        "bf.cfg",
        "-f",
        "root.tgz",
        "-v",
    ]);
    assert_eq!(
        rshim_target(&a).unwrap(),
        ("rshim3".into(), PathBuf::from("/dev"))
    );
    assert_eq!(a.bf_cfg.as_deref(), Some(Path::new("bf.cfg")));
    assert_eq!(a.rootfs.as_deref(), Some(Path::new("root.tgz")));
    assert!(a.verbose);
    let a = parse(&["-r", "/tmp/sim/rshim1/", "-b", "x.bfb", "--bf-cfg", "old.cfg"]);
    assert_eq!(
        rshim_target(&a).unwrap(),
        ("rshim1".into(), PathBuf::from("/tmp/sim"))
    );
    assert_eq!(a.bf_cfg.as_deref(), Some(Path::new("old.cfg")));
    for (argv, needle) in [
        (vec!["-r", "10.0.0.1:rshim0"], "remote rshim"),
        (vec!["-r", "dev/rshim0"], "absolute path"),
        (vec!["-r", "/dev/sda"], "rshim<N>"),
        (vec!["-r", "/x/rshim0", "--dev-root", "/dev"], "--dev-root"),
    ] {
        let mut v = argv.clone();
        v.extend(["-b", "x.bfb"]);
        let e = rshim_target(&parse(&v)).unwrap_err();
        assert!(e.contains(needle), "{argv:?}: {e}");
    }
}

#[test]
fn unsupported_bfb_install_options_are_refused_by_name() {
    for (opt, name) in [
        (vec!["-a", "1"], "-a/--apply-lfwp"),
        (vec!["--apply-lfwp", "0"], "-a/--apply-lfwp"),
        (vec!["-d"], "-d/--deferred"),
        (vec!["-k"], "-k/--keep-log"),
        (vec!["-p", "x.pldm"], "-p/--pldm"),
        (vec!["-R"], "-R/--reverse-nc"),
        (vec!["-u"], "-u/--runtime"),
        (vec!["-m", "scp"], "remote mode applies only to a remote rshim"),
        (vec!["-m", "ftp"], "expected scp, nc or ncpipe"),
    ] {
        let mut v = vec!["-r", "rshim0", "-b", "x.bfb"];
        v.extend(opt.iter());
        let e = parse(&v).check_options().unwrap_err();
        assert!(e.contains(name), "{opt:?}: {e}");
    }
    assert!(parse(&["-r", "rshim0", "-b", "x"]).check_options().is_ok());
}

#[test]
fn flash_argv_by_program_name_or_subcommand() {
    let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(
        flash_argv(&v(&["/usr/sbin/bfb-install", "-r", "rshim0"])),
        Some(v(&["/usr/sbin/bfb-install", "-r", "rshim0"]))
    );
    assert_eq!(
        flash_argv(&v(&["hostplane-agent", "flash", "-c", "x"])),
        Some(v(&["hostplane-agent flash", "-c", "x"]))
    );
    assert_eq!(flash_argv(&v(&["hostplane-agent", "run"])), None);
    assert_eq!(
        flash_argv(&v(&["hostplane-agent", "--config", "x", "flash"])),
        None
    );
}

#[tokio::test]
async fn usage_errors_exit_64_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.bfb");
    std::fs::write(&img, b"x").unwrap();
    let img = img.to_str().unwrap();
    let sha = "a".repeat(64);
    let bin = dir.path().join("bin.cfg");
    std::fs::write(&bin, b"\xff").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--rshim", "eth0", "--bfb", img], "--rshim"),
        (
            vec!["-r", "rshim0", "-b", img, "-f", "/nonexistent/rootfs"],
            "--rootfs /nonexistent/rootfs",
        ),
        (
            vec!["--rshim", "rshim0", "--bfb", "https://h/x.bfb"],
            "--sha256 is required",
        ),
        (
            vec!["--rshim", "rshim0", "--bfb", "ftp://h/x.bfb", "--sha256", &sha],
            "scheme",
        ),
        (
            vec!["--rshim", "rshim0", "--bfb", img, "--sha256", "xyz"],
            "--sha256",
        ),
        (
            vec!["--rshim", "rshim0", "--bfb", "/nonexistent/x.bfb"],
            "/nonexistent/x.bfb",
        ),
        (
            vec![
                "--rshim",
                "rshim0",
                "--bfb",
                img,
                "--bf-cfg",
                bin.to_str().unwrap(),
            ],
            "--config",
        ),
    ];
    for (argv, needle) in cases {
        let (code, _, err) = exit(parse(&argv)).await;
        assert_eq!(code, EXIT_USAGE, "{argv:?}: {err}");
        assert!(err.contains(needle), "{argv:?}: {err}");
    }
}

#[tokio::test]
async fn failures_exit_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.bfb");
    std::fs::write(&img, b"not a bfb at all").unwrap();
    std::fs::create_dir_all(dir.path().join("dev/rshim0")).unwrap();
    let dev = dir.path().join("dev");
    let args = parse(&[
        "--rshim",
        "rshim0",
        "--bfb",
        img.to_str().unwrap(),
        "--dev-root",
        dev.to_str().unwrap(),
    ]);
    let (code, _, err) = exit(args).await;
    assert_eq!(code, EXIT_FAILED, "{err}");
    assert!(
        err.contains("stage prepare") && err.contains("bad magic"),
        "{err}"
    );

    // A digest that does not match: refused, exit 1.
    let mut good = Vec::new();
    hostplane_bfb::write_test_bfb(&mut good, 10_000, "1", 3).unwrap();
    std::fs::write(&img, &good).unwrap();
    let cache = dir.path().join("cache");
    let args = parse(&[
        "--rshim",
        "rshim0",
        "--bfb",
        img.to_str().unwrap(),
        "--sha256",
        &"0".repeat(64),
        "--cache-dir",
        cache.to_str().unwrap(),
    ]);
    let (code, _, err) = exit(args).await;
    assert_eq!(code, EXIT_FAILED, "{err}");
    assert!(err.contains("sha256 mismatch"), "{err}");
}

#[test]
fn sizes() {
    assert_eq!(size(512), "512 B");
    assert_eq!(size(3 << 20), "3.0 MiB");
    assert_eq!(size(3 << 30), "3.00 GiB");
}
