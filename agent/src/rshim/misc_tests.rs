use super::*;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/misc")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn parses_level0_fields() {
    let s = MiscSnapshot::parse(&fixture("level0.txt"));
    assert_eq!(s.dev_name(), Some("pcie-0000:04:00.2"));
    assert_eq!(s.dev_info(), Some("BlueField-3(Rev 1)"));
    assert_eq!(s.display_level(), Some(0));
    assert_eq!(s.number("BOOT_TIMEOUT"), Some(300));
    assert_eq!(s.get("BF_MODE"), Some("DPU mode"));
    assert_eq!(s.number("UP_TIME"), Some(1234));
    assert!(!s.has_log_section);
    assert!(s.log.is_empty());
    assert_eq!(s.fields.len(), 11);
}

#[test]
fn parses_level2_log_section() {
    let s = MiscSnapshot::parse(&fixture("level2_install.txt"));
    assert!(s.has_log_section);
    assert_eq!(s.display_level(), Some(2));
    assert_eq!(s.number("CLEAR_ON_READ"), Some(1));
    assert_eq!(s.get("BOOT_RESET_SKIP"), Some("0 (1: skip)"));
    assert_eq!(s.get("VLAN_ID"), Some("0 0 (rw)"));
    assert_eq!(s.dev_name(), Some("pcie-0000:a3:00.2"));
    assert_eq!(
        s.log,
        vec![
            "INFO[PSC]: PSC BL1 START",
            "INFO[BL2]: start",
            "INFO[BL2]: boot mode (rshim)",
            "WARN[BL2]: DDR training took longer than expected",
            "INFO[BL31]: start",
            "INFO[UEFI]: eMMC init",
            "INFO[MISC]: Found bf.cfg",
            "INFO[MISC]: Ubuntu installation started",
        ]
    );
    // No log line leaked into the fields, no field into the log.
    assert!(s.fields.iter().all(|(k, _)| !k.contains('[')));
}

#[test]
fn parses_crash_with_register_lines() {
    let s = MiscSnapshot::parse(&fixture("level2_crash.txt"));
    let kinds: Vec<LogKind> = s.log.iter().map(|l| classify_log_line(l)).collect();
    assert_eq!(
        kinds,
        vec![
            LogKind::Info,
            LogKind::Assert,
            LogKind::Exception,
            LogKind::Other,
            LogKind::Other,
            LogKind::Panic,
            LogKind::Other,
            LogKind::Err,
            LogKind::Info,
        ]
    );
    assert_eq!(s.log[3], "elr_el3 = 0x00000000000b1c24");
}

#[test]
fn log_without_banner_starts_at_first_level_line() {
    let s = MiscSnapshot::parse("DEV_NAME        usb-1-1\n INFO[BL2]: start\n ERR[BL2]: bad\n");
    assert_eq!(s.dev_name(), Some("usb-1-1"));
    assert_eq!(s.log, vec!["INFO[BL2]: start", "ERR[BL2]: bad"]);
    assert!(!s.has_log_section);
}

#[test]
fn classify_table() {
    for (line, kind) in [
        (" INFO[MISC]: Linux up", LogKind::Info),
        (" WARN[UEFI]: slow", LogKind::Warn),
        (" ERR[MISC]: Installation failed", LogKind::Err),
        (" ASSERT[BL2]: drivers/x.c:12", LogKind::Assert),
        (" Exception(BL31): syndrome = 0x1", LogKind::Exception),
        (" PANIC(UEFI): PC = 0x2", LogKind::Panic),
        (" INFO[MISC]: CRITICAL ERROR: eMMC not found", LogKind::Critical),
        ("critical error during install", LogKind::Critical),
        (" INFO[MISC]: no ERRors here", LogKind::Info),
        ("DEV_INFO        BlueField-3(Rev 1)", LogKind::Other),
        ("ERRATA applied", LogKind::Other),
        ("   x0 = 0x0", LogKind::Other),
    ] {
        assert_eq!(classify_log_line(line), kind, "{line:?}");
        assert_eq!(kind.is_failure(), classify_log_line(line).is_failure());
    }
    assert!(LogKind::Critical.is_failure());
    assert!(!LogKind::Warn.is_failure());
}

#[tokio::test]
async fn misc_file_reads_and_writes_one_command_per_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("misc");
    std::fs::write(&path, fixture("level0.txt")).unwrap();
    let client = MiscClient::new(Arc::new(MiscFile {
        rshim: "rshim0".into(),
        path: path.clone(),
    }));
    let snap = client.read_snapshot().await.unwrap();
    assert_eq!(snap.dev_name(), Some("pcie-0000:04:00.2"));

    std::fs::write(&path, "").unwrap();
    client.command("CLEAR_ON_READ", "1").await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "CLEAR_ON_READ 1\n");
}

#[tokio::test]
async fn misc_errors_name_rshim_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let client = MiscClient::new(Arc::new(MiscFile {
        rshim: "rshim4".into(),
        path: dir.path().join("nope"),
    }));
    let err = client.read_snapshot().await.unwrap_err();
    assert!(
        matches!(err, RshimError::NoDevice { ref rshim, .. } if rshim == "rshim4"),
        "{err}"
    );

    let err = client.command("display_level", "2").await.unwrap_err();
    assert!(matches!(err, RshimError::InvalidCommand { .. }), "{err}");
    let err = client
        .command("DISPLAY_LEVEL", "2\nSW_RESET 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rshim4"), "{err}");

    // A write the device refuses: a directory in place of misc gives EISDIR.
    let misc_dir = dir.path().join("misc");
    std::fs::create_dir(&misc_dir).unwrap();
    let client = MiscClient::new(Arc::new(MiscFile {
        rshim: "rshim4".into(),
        path: misc_dir,
    }));
    let err = client.command("DISPLAY_LEVEL", "2").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RshimError::Command { .. }), "{msg}");
    assert!(msg.contains("rshim4") && msg.contains("DISPLAY_LEVEL 2"), "{msg}");
}

#[test]
fn command_errno_is_described() {
    let e = io::Error::from_raw_os_error(libc::EINVAL);
    assert!(describe_errno(&e).unwrap().starts_with("EINVAL"));
    let e = io::Error::from_raw_os_error(libc::EBUSY);
    assert!(describe_errno(&e).unwrap().starts_with("EBUSY"));
}
