//! HostExecutor dispatch with a recording flash path and real reboot commands.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hostplane_proto::v1::{
    Bridge, ConfigFwParameters, DpuClusterConfig, FlashBfb, InitializeInterface, PrepareBfb, RebootHost,
};

use super::*;

/// Records what the executor asked of the flash path; fails when told to.
#[derive(Default)]
struct RecordingFlash {
    calls: Mutex<Vec<String>>,
    fail: Mutex<Option<FlashError>>,
}

impl FlashJobs for RecordingFlash {
    fn discover(&self) -> BoxFuture<'_, Vec<RshimInfo>> {
        Box::pin(async {
            vec![RshimInfo {
                name: "rshim3".into(),
                ..Default::default()
            }]
        })
    }

    fn prepare<'a>(
        &'a self,
        bfb: &'a BfbRef,
        _: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<PathBuf, FlashError>> {
        self.calls.lock().unwrap().push(format!("prepare {}", bfb.name));
        let res = match self.fail.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(PathBuf::from("/cache/ab12")),
        };
        Box::pin(async { res })
    }

    fn flash(
        &self,
        req: FlashRequest,
        _: mpsc::Sender<FlashProgress>,
        _: CancellationToken,
    ) -> BoxFuture<'_, Result<FlashReport, FlashError>> {
        let ImageSource::Ref(bfb) = &req.image else {
            panic!("expected a Bfb ref")
        };
        let params = match &req.bf_cfg {
            BfCfg::Params(p) => p
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            BfCfg::None => "-".into(),
            BfCfg::Raw(_) => panic!("raw bf.cfg"),
            BfCfg::Flavor { params, os } => format!("{params:?} {} config files", os.config_files.len()),
        };
        self.calls
            .lock()
            .unwrap()
            .push(format!("flash {} {} {params}", req.rshim, bfb.name));
        let res = match self.fail.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(FlashReport {
                bytes_pushed: 4096,
                elapsed: Duration::from_secs(90),
                log: vec![],
                verdict_line: "INFO[MISC]: DPU is ready".into(),
            }),
        };
        Box::pin(async { res })
    }
}

fn executor(reboot: &[&str]) -> (HostExecutor, Arc<RecordingFlash>) {
    let flash = Arc::new(RecordingFlash::default());
    let reboot = reboot.iter().map(|s| s.to_string()).collect();
    (HostExecutor::new(flash.clone(), reboot), flash)
}

fn cmd(action: Option<Action>) -> Command {
    Command {
        id: "c1".into(),
        dpu: "dpu-a".into(),
        rshim: "rshim0".into(),
        action,
    }
}

async fn exec(ex: &HostExecutor, c: Command) -> (CommandOutcome, String) {
    let (tx, _rx) = mpsc::channel(1);
    let r = ex.execute(c, tx, CancellationToken::new()).await;
    assert!(r.finished_at_ms > 0);
    (r.outcome(), r.message)
}

fn bfb() -> Option<BfbRef> {
    Some(BfbRef {
        name: "doca-2.9".into(),
        url: "http://x/a.bfb".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn flash_actions_go_to_the_flash_path_with_their_parameters() {
    let (ex, flash) = executor(&["true"]);
    let (o, m) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: bfb() })))).await;
    assert_eq!(o, CommandOutcome::Succeeded);
    assert!(m.contains("doca-2.9") && m.contains("/cache/ab12"), "{m}");
    let bf_cfg = HashMap::from([("UPDATE_DPU_OS".to_string(), "yes".to_string())]);
    let (o, m) = exec(
        &ex,
        cmd(Some(Action::FlashBfb(FlashBfb {
            bfb: bfb(),
            bf_cfg,
            dpu_os: None,
        }))),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded);
    assert!(
        m.contains("rshim0 installed bfb doca-2.9") && m.contains("DPU is ready"),
        "{m}"
    );
    let (o, _) = exec(
        &ex,
        cmd(Some(Action::FlashBfb(FlashBfb {
            bfb: bfb(),
            ..Default::default()
        }))),
    )
    .await;
    assert_eq!(o, CommandOutcome::Succeeded);
    assert_eq!(
        *flash.calls.lock().unwrap(),
        [
            "prepare doca-2.9",
            "flash rshim0 doca-2.9 UPDATE_DPU_OS=yes",
            "flash rshim0 doca-2.9 -"
        ]
    );
    let inv = ex.inventory().await;
    assert_eq!(inv.rshims[0].name, "rshim3");
}

#[tokio::test]
async fn flash_errors_become_failed_or_cancelled_with_their_text() {
    let (ex, flash) = executor(&["true"]);
    let flash_cmd = || {
        cmd(Some(Action::FlashBfb(FlashBfb {
            bfb: bfb(),
            ..Default::default()
        })))
    };
    *flash.fail.lock().unwrap() = Some(FlashError::Busy {
        rshim: "rshim0".into(),
        reason: "EBUSY".into(),
    });
    let (o, m) = exec(&ex, flash_cmd()).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(m.contains("rshim0") && m.contains("EBUSY"), "{m}");

    *flash.fail.lock().unwrap() = Some(FlashError::Cancelled {
        rshim: "rshim0".into(),
        stage: crate::flash::Stage::Push,
        pushed: 77,
    });
    let (o, m) = exec(&ex, flash_cmd()).await;
    assert_eq!(o, CommandOutcome::Cancelled);
    assert!(m.contains("77"), "{m}");

    *flash.fail.lock().unwrap() = Some(FlashError::Download {
        source: CacheError::Cancelled {
            url: "http://x/a.bfb".into(),
        },
    });
    let (o, _) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: bfb() })))).await;
    assert_eq!(o, CommandOutcome::Cancelled);
}

#[tokio::test]
async fn malformed_commands_fail_naming_what_is_missing() {
    let (ex, flash) = executor(&["true"]);
    let (o, m) = exec(&ex, cmd(None)).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(
        m.contains("c1") && m.contains("dpu-a") && m.contains("no action"),
        "{m}"
    );
    let (o, m) = exec(&ex, cmd(Some(Action::PrepareBfb(PrepareBfb { bfb: None })))).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(m.contains("names no bfb"), "{m}");
    let mut c = cmd(Some(Action::FlashBfb(FlashBfb {
        bfb: bfb(),
        ..Default::default()
    })));
    c.rshim.clear();
    let (o, m) = exec(&ex, c).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(m.contains("names no rshim"), "{m}");
    assert!(flash.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unsupported_jobs_are_skipped_saying_why() {
    let (ex, _) = executor(&["true"]);
    let net = HostNetwork {
        num_vfs: 8,
        mtu: 9000,
        bridges: vec![Bridge {
            name: "br-dpu".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ii = |host_network| Some(Action::InitializeInterface(InitializeInterface { host_network }));
    let fw = |pairs: &[(&str, &str)]| {
        let nic_firmware = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Action::ConfigFwParameters(ConfigFwParameters {
            nic_firmware,
            ..Default::default()
        }))
    };
    let cases = [
        (
            ii(Some(net)),
            vec![
                "host networking is disabled on this agent",
                "8 VFs",
                "MTU 9000",
                "br-dpu",
            ],
        ),
        (ii(None), vec!["no host network settings"]),
        (ii(Some(HostNetwork::default())), vec!["no host network settings"]),
        (fw(&[]), vec!["no NIC firmware parameters"]),
        (
            fw(&[("SRIOV_EN", "1"), ("NUM_OF_VFS", "8")]),
            vec!["not applied: NUM_OF_VFS, SRIOV_EN"],
        ),
        (
            Some(Action::DpuClusterConfig(DpuClusterConfig {})),
            vec!["no DPU cluster configured"],
        ),
    ];
    for (action, wanted) in cases {
        let (o, m) = exec(&ex, cmd(action)).await;
        assert_eq!(o, CommandOutcome::Skipped, "{m}");
        for w in wanted {
            assert!(m.contains(w), "{m:?} lacks {w:?}");
        }
    }
}

#[tokio::test]
async fn reboot_succeeds_when_the_command_does() {
    let (ex, _) = executor(&["true"]);
    let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost::default())))).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.contains("reboot issued with `true`"), "{m}");
}

#[tokio::test]
async fn reboot_failure_carries_stderr() {
    let (ex, _) = executor(&["sh", "-c", "echo 'Failed to reboot: access denied' >&2; exit 3"]);
    let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost::default())))).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(m.contains("access denied") && m.contains('3'), "{m}");

    let (ex, _) = executor(&["/nonexistent/reboot"]);
    let (o, m) = exec(&ex, cmd(Some(Action::RebootHost(RebootHost::default())))).await;
    assert_eq!(o, CommandOutcome::Failed);
    assert!(
        m.contains("cannot run reboot command `/nonexistent/reboot`"),
        "{m}"
    );
}

#[tokio::test]
async fn cancelled_reboot_reports_cancelled() {
    let (ex, _) = executor(&["sleep", "600"]);
    let cancel = CancellationToken::new();
    let (tx, _rx) = mpsc::channel(1);
    let run = ex.execute(
        cmd(Some(Action::RebootHost(RebootHost::default()))),
        tx,
        cancel.clone(),
    );
    let canceller = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cancel.cancel();
    };
    let (r, ()) = tokio::join!(run, canceller);
    assert_eq!(r.outcome(), CommandOutcome::Cancelled, "{}", r.message);

    let (tx, _rx) = mpsc::channel(1);
    let r = ex
        .execute(cmd(Some(Action::RebootHost(RebootHost::default()))), tx, cancel)
        .await;
    assert_eq!(r.outcome(), CommandOutcome::Cancelled);
    assert!(r.message.contains("before it started"), "{}", r.message);
}

/// A network manager that applies what it is told, reporting `failing` objects as failed.
struct FakeNet {
    failing: Vec<String>,
    drift: tokio::sync::broadcast::Sender<hostplane_proto::v1::NetworkReport>,
}

impl crate::session::HostNetworks for FakeNet {
    fn validate(&self, _: &[hostplane_proto::v1::DpuNetwork]) -> Result<(), crate::net::NetError> {
        Ok(())
    }

    fn set_desired(
        &self,
        nets: Vec<hostplane_proto::v1::DpuNetwork>,
    ) -> BoxFuture<'_, Result<Vec<hostplane_proto::v1::NetworkReport>, crate::net::NetError>> {
        use hostplane_proto::v1::{NetworkObjectStatus, NetworkReport};
        let reports = nets
            .iter()
            .map(|n| {
                let objects: Vec<NetworkObjectStatus> = n
                    .network
                    .iter()
                    .flat_map(|h| h.bridges.iter())
                    .map(|b| {
                        let failed = self.failing.contains(&b.name);
                        NetworkObjectStatus {
                            object: format!("bridge {}", b.name),
                            applied: !failed,
                            error: if failed {
                                format!("create bridge {}: Operation not permitted (os error 1)", b.name)
                            } else {
                                String::new()
                            },
                        }
                    })
                    .collect();
                NetworkReport {
                    dpu: n.dpu.clone(),
                    applied: objects.iter().all(|o| o.applied),
                    objects,
                    changes: 1,
                    ..Default::default()
                }
            })
            .collect();
        Box::pin(async move { Ok(reports) })
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<hostplane_proto::v1::NetworkReport> {
        self.drift.subscribe()
    }
}

fn bridges(names: &[&str]) -> HostNetwork {
    HostNetwork {
        bridges: names
            .iter()
            .map(|n| Bridge {
                name: n.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn initialize_interface_answers_with_the_dpus_network_report() {
    use hostplane_proto::v1::DpuNetwork;
    let fake = FakeNet {
        failing: vec!["br-bad".into()],
        drift: tokio::sync::broadcast::channel(1).0,
    };
    let sync = NetSync::new(Arc::new(fake));
    let (ex, _) = executor(&["true"]);
    let ex = ex.with_network(sync.clone(), Duration::from_secs(30));
    let net_of = |dpu: &str, names: &[&str]| DpuNetwork {
        dpu: dpu.into(),
        pf_pci_address: String::new(),
        network: Some(bridges(names)),
    };
    // What the session does before it starts the command.
    sync.apply(vec![
        net_of("dpu-a", &["br-dpu"]),
        net_of("dpu-b", &["br-ok", "br-bad"]),
    ])
    .await;
    let ii = |dpu: &str, names: &[&str]| Command {
        dpu: dpu.into(),
        ..cmd(Some(Action::InitializeInterface(InitializeInterface {
            host_network: Some(bridges(names)),
        })))
    };

    let (o, m) = exec(&ex, ii("dpu-a", &["br-dpu"])).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert_eq!(
        m,
        "applied 1 host network object(s) on the host (1 netlink change(s)): bridge br-dpu"
    );

    let (o, m) = exec(&ex, ii("dpu-b", &["br-ok", "br-bad"])).await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(
        m.starts_with(
            "1 of 2 host network object(s) not applied: bridge br-bad: create bridge br-bad: Operation not permitted"
        ),
        "{m}"
    );

    // A flavor without a host network is the only SKIPPED.
    let (o, m) = exec(&ex, ii("dpu-c", &[])).await;
    assert_eq!(o, CommandOutcome::Skipped, "{m}");

    // The coordinator never listed dpu-c's network: FAILED after the wait, saying so.
    let (o, m) = exec(&ex, ii("dpu-c", &["br-c"])).await;
    assert_eq!(o, CommandOutcome::Failed, "{m}");
    assert!(
        m.contains("no desired state listed a host network for dpu dpu-c within 30s")
            && m.contains("bridges br-c"),
        "{m}"
    );
}
