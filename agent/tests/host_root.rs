//! One host root: `host_root` (or `HOSTPLANE_HOST_ROOT`) re-roots every host
//! facet — /proc (the host name is read there), /dev, /sys for networking
//! and for power, /run for the flash locks — and nothing of the agent's own.
use std::path::{Path, PathBuf};

use hostplane_agent::config::{Config, ConfigError, MapEnv};

/// A host tree whose host name is `name`, and a config file using it as `host_root` (or not).
fn host(name: &str, host_root_key: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("host");
    std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/hostname"), format!("{name}\n")).unwrap();
    let file = d.path().join("agent.yaml");
    let key = if host_root_key {
        format!("host_root: {}\n", root.display())
    } else {
        String::new()
    };
    std::fs::write(
        &file,
        format!("{key}coordinator: http://127.0.0.1:1\ninsecure: true\nstate_dir: /var/lib/x\n"),
    )
    .unwrap();
    (d, root, file)
}

fn assert_rerooted(cfg: &Config, root: &Path, name: &str) {
    assert_eq!(cfg.node_name, name, "the host name came from <host_root>/proc");
    assert_eq!(cfg.procfs_root, root.join("proc"));
    assert_eq!(cfg.dev_root, root.join("dev"));
    assert_eq!(cfg.network.sysfs_root, root.join("sys"));
    assert_eq!(cfg.power.sysfs_root, root.join("sys"));
    assert_eq!(cfg.flash_config().run_dir, root.join("run/hostplane"));
    assert_eq!(cfg.flash_config().dev_root, root.join("dev"));
    assert_eq!(
        cfg.state_dir,
        Path::new("/var/lib/x"),
        "the agent's own state is not re-rooted"
    );
    assert!(cfg.deprecated.is_empty(), "{:?}", cfg.deprecated);
}

#[test]
fn host_root_in_the_file_reroots_every_facet() {
    let (_d, root, file) = host("node-from-host-root", true);
    let cfg = Config::load(Some(&file), &MapEnv::new([] as [(&str, &str); 0])).unwrap();
    assert_rerooted(&cfg, &root, "node-from-host-root");
}

#[test]
fn hostplane_host_root_does_the_same() {
    let (_d, root, file) = host("node-from-env", false);
    let env = MapEnv::new([("HOSTPLANE_HOST_ROOT", root.to_str().unwrap())]);
    let cfg = Config::load(Some(&file), &env).unwrap();
    assert_rerooted(&cfg, &root, "node-from-env");
}

#[test]
fn a_facet_path_is_a_host_path_under_host_root() {
    let (_d, root, file) = host("n", true);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("dev_root: /fake/dev\npower:\n  sysfs_root: /other/sys\n");
    std::fs::write(&file, text).unwrap();
    let cfg = Config::load(Some(&file), &MapEnv::new([] as [(&str, &str); 0])).unwrap();
    assert_eq!(cfg.dev_root, root.join("fake/dev"));
    assert_eq!(cfg.power.sysfs_root, root.join("other/sys"));
    assert_eq!(cfg.network.sysfs_root, root.join("sys"));
}

#[test]
fn without_host_root_nothing_moves() {
    let c = Config::default();
    let mut r = c.clone();
    r.reroot().unwrap();
    assert_eq!(r, c);
    assert_eq!(c.flash_config().run_dir, Path::new("/run/hostplane"));
}

#[test]
fn a_relative_host_root_is_refused_naming_it() {
    let (_d, _root, file) = host("n", false);
    let env = MapEnv::new([("HOSTPLANE_HOST_ROOT", "host")]);
    match Config::load(Some(&file), &env) {
        Err(
            e @ ConfigError::Invalid {
                field: "host_root", ..
            },
        ) => {
            assert_eq!(
                e.to_string(),
                "invalid config: host_root: host must be an absolute path"
            );
        }
        other => panic!("expected a host_root error, got {other:?}"),
    }
}

#[test]
fn the_old_hostplane_sysfs_root_still_works_and_says_it_is_deprecated() {
    let (_d, _root, file) = host("n", true);
    let env = MapEnv::new([("HOSTPLANE_SYSFS_ROOT", "/s"), ("HOSTPLANE_NODE_NAME", "n")]);
    let cfg = Config::load(Some(&file), &env).unwrap();
    assert!(
        cfg.network.sysfs_root.ends_with("s"),
        "{}",
        cfg.network.sysfs_root.display()
    );
    assert_eq!(cfg.deprecated.len(), 1);
    assert!(
        cfg.deprecated[0].contains("HOSTPLANE_HOST_ROOT"),
        "{:?}",
        cfg.deprecated
    );
    // validate prints it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .args(["validate", "--config", file.to_str().unwrap()])
        .env("HOSTPLANE_SYSFS_ROOT", "/s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOSTPLANE_SYSFS_ROOT is deprecated"), "{err}");
}
