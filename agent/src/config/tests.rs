use super::*;
use crate::flash::StageTimeouts;

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, Path::new("test.yaml"))
}

fn valid() -> Config {
    Config {
        node_name: "host-1".into(),
        coordinator: "http://127.0.0.1:50051".into(),
        insecure: true,
        ..Config::default()
    }
}

#[test]
fn empty_yaml_is_the_default() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("# nothing\n").unwrap(), Config::default());
}

#[test]
fn yaml_sets_fields_and_keeps_defaults() {
    let cfg = parse(
        "node_name: n1\ncoordinator: http://10.0.0.1:50051\ninsecure: true\nstate_dir: /s\n\
         session:\n  backoff_max: 5s\nflash:\n  poll_interval: 250ms\n  stage_timeouts:\n    install: 2h\n\
         reboot_command: [/sbin/reboot, -f]\nlog_format: json\nshutdown_grace: 3s\n\
         network:\n  netns: lab1\n  sysfs_root: /fake/sys\n  drift_debounce: 20ms\n",
    )
    .unwrap();
    assert_eq!(cfg.node_name, "n1");
    assert_eq!(cfg.coordinator, "http://10.0.0.1:50051");
    assert_eq!(cfg.state_dir, Path::new("/s"));
    assert_eq!(cfg.session.backoff_max, Duration::from_secs(5));
    assert_eq!(cfg.session.backoff_initial, Duration::from_millis(500));
    assert_eq!(cfg.flash.poll_interval, Duration::from_millis(250));
    assert_eq!(cfg.flash.stage_timeouts.install, Duration::from_secs(7200));
    assert_eq!(cfg.flash.stage_timeouts.boot, StageTimeouts::default().boot);
    let fc = cfg.flash_config();
    assert_eq!(
        (fc.dev_root.as_path(), fc.poll_interval),
        (Path::new("/dev"), Duration::from_millis(250))
    );
    assert_eq!(fc.stage_timeouts, cfg.flash.stage_timeouts);
    assert_eq!(cfg.reboot_command, ["/sbin/reboot", "-f"]);
    assert_eq!(cfg.log_format, LogFormat::Json);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(3));
    assert_eq!(cfg.dev_root, Path::new("/dev"));
    assert!(cfg.network.enabled, "enabled by default");
    let nc = cfg.net_config();
    assert_eq!(nc.netns.as_deref(), Some("lab1"));
    assert_eq!(nc.sysfs_root, Path::new("/fake/sys"));
    assert_eq!(nc.drift_debounce, Duration::from_millis(20));
    cfg.validate().unwrap();
    let off = parse("network:\n  enabled: false\n").unwrap();
    assert!(!off.network.enabled);
    assert_eq!(
        off.net_config(),
        NetConfig {
            enabled: false,
            // The address record lives under the state directory.
            owned_file: Some(off.state_dir.join(crate::net::OWNED_FILE)),
            ..NetConfig::default()
        }
    );
    let err = parse("network:\n  netnss: x\n").unwrap_err();
    assert!(err.to_string().contains("netnss"), "{err}");
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let err = parse("node_name: n1\ncoordinatr: http://x:1\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("coordinatr") && msg.contains("test.yaml"), "{msg}");
    let err = parse("session:\n  backof_max: 1s\n").unwrap_err();
    assert!(err.to_string().contains("backof_max"), "{err}");
}

#[test]
fn env_overrides_the_file() {
    let mut cfg = parse("node_name: from-file\nstate_dir: /file\n").unwrap();
    let env = MapEnv::new([
        ("HOSTPLANE_NODE_NAME", "from-env"),
        ("HOSTPLANE_COORDINATOR", "http://c:1"),
        ("HOSTPLANE_STATE_DIR", "/env"),
        ("HOSTPLANE_DEV_ROOT", "/d"),
        ("HOSTPLANE_PROCFS_ROOT", "/p"),
        ("HOSTPLANE_CACHE_DIR", "/c"),
        ("HOSTPLANE_SYSFS_ROOT", "/s"),
        ("HOSTPLANE_CACHE_MAX_BYTES", "1024"),
        ("HOSTPLANE_LOG_FORMAT", "json"),
    ]);
    cfg.apply_env(&env).unwrap();
    assert_eq!(cfg.node_name, "from-env");
    assert_eq!(cfg.coordinator, "http://c:1");
    assert_eq!(cfg.state_dir, Path::new("/env"));
    assert_eq!(cfg.dev_root, Path::new("/d"));
    assert_eq!(cfg.procfs_root, Path::new("/p"));
    assert_eq!(cfg.cache.dir, Path::new("/c"));
    assert_eq!(cfg.network.sysfs_root, Path::new("/s"));
    assert_eq!(cfg.cache.max_bytes, 1024);
    assert_eq!(cfg.log_format, LogFormat::Json);
}

#[test]
fn bad_env_values_name_the_variable() {
    for (var, value) in [
        ("HOSTPLANE_CACHE_MAX_BYTES", "lots"),
        ("HOSTPLANE_LOG_FORMAT", "xml"),
    ] {
        let err = Config::default()
            .apply_env(&MapEnv::new([(var, value)]))
            .unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { var: v, .. } if v == var),
            "{err}"
        );
        assert!(err.to_string().contains(value), "{err}");
    }
}

#[test]
fn validate_names_the_field() {
    type Mutate = fn(&mut Config);
    let cases: [(&str, Mutate); 31] = [
        ("node_name", |c| c.node_name.clear()),
        ("node_name", |c| c.node_name = "a b".into()),
        ("coordinator", |c| c.coordinator = "not a url".into()),
        ("coordinator", |c| c.coordinator = "ftp://x:1".into()),
        ("tls", |c| c.coordinator = "https://x:1".into()),
        ("coordinator", |c| c.insecure = false),
        ("tls", |c| {
            c.tls = Some(TlsConfig {
                ca_file: "/ca".into(),
                cert_file: "/c".into(),
                key_file: "/k".into(),
            })
        }),
        ("coordinator", |c| c.coordinator = "http://x:1/api".into()),
        ("state_dir", |c| c.state_dir = "relative".into()),
        ("cache.dir", |c| c.cache.dir = "cache".into()),
        ("cache.max_bytes", |c| c.cache.max_bytes = 0),
        ("session.backoff_max", |c| {
            c.session.backoff_max = Duration::from_millis(100)
        }),
        ("session.default_lease", |c| {
            c.session.default_lease = Duration::from_millis(100)
        }),
        ("flash.poll_interval", |c| c.flash.poll_interval = Duration::ZERO),
        ("flash.stage_timeouts.boot", |c| {
            c.flash.stage_timeouts.boot = Duration::ZERO
        }),
        ("cache.max_attempts", |c| c.cache.max_attempts = 0),
        ("reboot_command", |c| c.reboot_command.clear()),
        ("network.sysfs_root", |c| c.network.sysfs_root = "sys".into()),
        ("network.netns", |c| c.network.netns = Some("a/b".into())),
        ("network.netns", |c| c.network.netns = Some(String::new())),
        ("power.interval", |c| c.power.interval = Duration::ZERO),
        ("power.interval", |c| c.power.interval = Duration::from_millis(99)),
        ("power.telemetry.batch_interval", |c| {
            c.power.telemetry.batch_interval = Duration::ZERO
        }),
        ("power.caps.reverify_interval", |c| {
            c.power.caps.reverify_interval = Duration::ZERO
        }),
        ("power.caps.default_lease", |c| {
            c.power.caps.default_lease = Duration::ZERO
        }),
        ("power.telemetry.buffer_samples", |c| {
            c.power.telemetry.buffer_samples = 0
        }),
        ("power.telemetry.max_batch", |c| c.power.telemetry.max_batch = 0),
        ("nic_firmware.timeout", |c| {
            c.nic_firmware.timeout = Duration::ZERO
        }),
        ("nic_firmware.mstconfig_path", |c| {
            c.nic_firmware.mstconfig_path = "".into()
        }),
        ("nic_firmware.mstconfig_path", |c| {
            c.nic_firmware.mstconfig_path = "  ".into()
        }),
        ("nic_firmware.mstconfig_path", |c| {
            c.nic_firmware.mstconfig_path = "/usr/bin/mst\nconfig".into()
        }),
    ];
    for (field, mutate) in cases {
        let mut cfg = valid();
        mutate(&mut cfg);
        match cfg.validate() {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected an error, got {other:?}"),
        }
    }
    valid().validate().unwrap();
}

#[test]
fn load_reads_file_env_and_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
    std::fs::write(proc.join("sys/kernel/hostname"), "gpu-node-7\n").unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "procfs_root: {}\ncoordinator: http://127.0.0.1:50051\ninsecure: true\n",
            proc.display()
        ),
    )
    .unwrap();

    let cfg = Config::load(Some(&file), &MapEnv::default()).unwrap();
    assert_eq!(cfg.node_name, "gpu-node-7");
    assert!(cfg.is_insecure());

    let env = MapEnv::new([("HOSTPLANE_NODE_NAME", "n2")]);
    assert_eq!(Config::load(Some(&file), &env).unwrap().node_name, "n2");

    let missing = dir.path().join("nope.yaml");
    let err = Config::load(Some(&missing), &MapEnv::default()).unwrap_err();
    assert!(
        matches!(err, ConfigError::Read { ref path, .. } if path == &missing),
        "{err}"
    );

    std::fs::write(&file, "procfs_root: /nonexistent-procfs\n").unwrap();
    let err = Config::load(Some(&file), &MapEnv::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent-procfs/sys/kernel/hostname"),
        "{err}"
    );
}

#[test]
fn tls_files_are_checked_and_must_name_this_node() {
    use hostplane_ctl::certs::{Ca, Leaf, Validity, write_pair};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, ca_pair) = Ca::generate("test CA", Validity::days(1)).unwrap();
    write_pair(d, "ca", &ca_pair, false).unwrap();
    for node in ["host-1", "host-2"] {
        let leaf = Leaf::Agent { node: node.into() };
        write_pair(
            d,
            &leaf.file_stem(),
            &ca.issue(&leaf, Validity::days(1)).unwrap(),
            false,
        )
        .unwrap();
    }
    let yaml = format!(
        "node_name: host-1\ncoordinator: https://coord:50051\ntls:\n  ca_file: {0}/ca.crt\n  \
         cert_file: {0}/agent-host-1.crt\n  key_file: {0}/agent-host-1.key\n",
        d.display()
    );
    let cfg = parse(&yaml).unwrap();
    cfg.validate().unwrap();
    assert!(!cfg.is_insecure());

    let mut other = cfg.clone();
    other.tls.as_mut().unwrap().cert_file = d.join("agent-host-2.crt");
    let e = other.validate().unwrap_err().to_string();
    assert!(
        e.contains("issued to \"host-2\", not to this node (\"host-1\")"),
        "{e}"
    );

    let mut missing = cfg.clone();
    missing.tls.as_mut().unwrap().key_file = d.join("nope.key");
    let e = missing.validate().unwrap_err().to_string();
    assert!(e.contains("tls.key_file") && e.contains("nope.key"), "{e}");

    let mut swapped = cfg.clone();
    swapped.tls.as_mut().unwrap().ca_file = d.join("agent-host-1.key");
    let e = swapped.validate().unwrap_err().to_string();
    assert!(
        e.contains("tls.ca_file") && e.contains("no CERTIFICATE block"),
        "{e}"
    );

    let mut plain = cfg.clone();
    plain.coordinator = "http://coord:50051".into();
    let e = plain.validate().unwrap_err().to_string();
    assert!(e.contains("plain http") && e.contains("insecure: true"), "{e}");

    let mut env_insecure = Config { tls: None, ..plain };
    env_insecure
        .apply_env(&MapEnv::new([("HOSTPLANE_INSECURE", "1")]))
        .unwrap();
    env_insecure.validate().unwrap();
    let e = env_insecure
        .apply_env(&MapEnv::new([("HOSTPLANE_INSECURE", "sure")]))
        .unwrap_err();
    assert!(e.to_string().contains("HOSTPLANE_INSECURE"), "{e}");
}

#[test]
fn coordinator_takes_a_list_from_yaml_or_env() {
    let cfg = parse("node_name: n1\ninsecure: true\ncoordinator: [http://a:1, http://b:2]\n").unwrap();
    assert_eq!(cfg.coordinator.as_slice(), ["http://a:1", "http://b:2"]);
    cfg.validate().unwrap();
    // One URL still reads and writes as a plain string.
    let one = parse("coordinator: http://a:1\n").unwrap();
    assert_eq!(one.coordinator.as_slice(), ["http://a:1"]);
    assert_eq!(
        serde_json::to_value(&one.coordinator).unwrap(),
        serde_json::json!("http://a:1")
    );
    let mut env_cfg = valid();
    env_cfg
        .apply_env(&MapEnv::new([(
            "HOSTPLANE_COORDINATOR",
            "http://a:1, http://b:2",
        )]))
        .unwrap();
    assert_eq!(env_cfg.coordinator, cfg.coordinator);
    assert_eq!(env_cfg.coordinator.to_string(), "http://a:1,http://b:2");
}

#[test]
fn every_coordinator_in_a_list_is_checked_naming_its_index() {
    let check = |urls: &[&str], insecure: bool| {
        let mut c = valid();
        c.coordinator = CoordinatorUrls::new(urls.iter().map(|u| u.to_string()).collect());
        c.insecure = insecure;
        c.validate().unwrap_err().to_string()
    };
    assert_eq!(
        check(&["http://a:1", "http://b:1/api"], true),
        "invalid config: coordinator[1]: \"http://b:1/api\": must not have a path"
    );
    assert!(
        check(&["http://a:1", "ftp://b:1"], true)
            .starts_with("invalid config: coordinator[1]: \"ftp://b:1\""),
    );
    assert!(check(&["http://a:1", "https://b:1"], true).contains("coordinator[1]: \"https://b:1\" and"));
    assert_eq!(
        check(&["http://a:1", "http://b:1", "http://A:1/"], true),
        "invalid config: coordinator[2]: \"http://A:1/\" repeats coordinator[0]"
    );
    // The scheme's own requirements hold for the list as for one URL.
    assert!(
        check(&["http://a:1", "http://b:1"], false)
            .starts_with("invalid config: coordinator: \"http://a:1\" is plain http")
    );
    assert!(check(&["https://a:1", "https://b:1"], false).starts_with("invalid config: tls: required"));
    assert_eq!(
        check(&[], true),
        "invalid config: coordinator: must name at least one URL"
    );
}

#[test]
fn nic_firmware_section_parses_with_defaults_and_names_bad_keys() {
    use crate::nicfw::{DevlinkMode, NicFwConfig};
    let d = parse("").unwrap().nic_firmware;
    assert_eq!(d, NicFwConfig::default());
    assert!(d.enabled);
    assert_eq!(d.mstconfig_path, Path::new("mstconfig"));
    assert_eq!(d.timeout, Duration::from_secs(120));
    assert_eq!(d.devlink, DevlinkMode::Auto);
    let c = parse(
        "nic_firmware:\n  enabled: false\n  mstconfig_path: /opt/mft/bin/mstconfig\n  timeout: 30s\n  devlink: off\n",
    )
    .unwrap()
    .nic_firmware;
    assert!(!c.enabled);
    assert_eq!(c.mstconfig_path, Path::new("/opt/mft/bin/mstconfig"));
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.devlink, DevlinkMode::Off);
    let err = parse("nic_firmware:\n  devlink: sometimes\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sometimes") && err.contains("auto"), "{err}");
    let err = parse("nic_firmware:\n  mstconfg_path: x\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("mstconfg_path"), "{err}");
}

#[test]
fn rshim_watch_section_is_parsed_and_checked() {
    let d = Config::default().rshim_watch;
    assert!(d.enabled);
    assert_eq!(
        (d.rescan_interval, d.debounce),
        (Duration::from_secs(30), Duration::from_millis(500))
    );
    let mut c = parse("rshim_watch:\n  enabled: false\n  rescan_interval: 2s\n").unwrap();
    assert!(!c.rshim_watch.enabled);
    assert_eq!(c.rshim_watch.rescan_interval, Duration::from_secs(2));
    assert_eq!(c.rshim_watch.debounce, Duration::from_millis(500));
    c.node_name = "host-1".into();
    c.coordinator = "http://127.0.0.1:50051".into();
    c.insecure = true;
    c.validate().unwrap();
    c.rshim_watch.rescan_interval = Duration::ZERO;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("rshim_watch.rescan_interval"), "{err}");
    let err = parse("rshim_watch:\n  rescan: 2s\n").unwrap_err().to_string();
    assert!(err.contains("rescan"), "{err}");
}
