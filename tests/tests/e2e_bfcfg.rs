//! End to end: a Flavor with every DPU OS section (grub, sysctl, config
//! files, OVS, containerd) provisions DPUs to Ready through the real
//! coordinator, agent and FUSE-simulated DPU, and the simulated DPU, which
//! decodes the bf.cfg it received on its own (docs/simulator.md), reports each
//! section and each file's path, size and digest as the Flavor said. Needs
//! FUSE (CI runs as root); without it the test prints why and returns.

use std::time::Duration;

use hostplane_proto::v1::{
    self, ConfigFile, ConfigFileOperation, ContainerdConfig, DpuOsConfig, DpuPhase, GrubConfig, NodeEffect,
    OvsConfig, RebootMethod, SysctlConfig,
};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{meta, require_fuse, wait_for, wait_phase};
use sha2::Digest;

const T: Duration = Duration::from_secs(90);

fn dpu_os() -> DpuOsConfig {
    DpuOsConfig {
        grub: Some(GrubConfig {
            kernel_parameters: vec!["hugepages=3072".into(), "iommu=pt".into()],
        }),
        sysctl: Some(SysctlConfig {
            parameters: vec!["net.ipv4.ip_forward=1".into(), "vm.swappiness=10".into()],
        }),
        config_files: vec![
            ConfigFile {
                path: "/etc/app/it's a file.conf".into(),
                operation: ConfigFileOperation::Override as i32,
                raw: "token='$(reboot)' `id`\n\u{e9}t\u{e9}\n".into(),
                permissions: "0600".into(),
                owner: "ubuntu:adm".into(),
            },
            ConfigFile {
                path: "/etc/motd".into(),
                operation: ConfigFileOperation::Append as i32,
                raw: "managed by hostplane\n".into(),
                permissions: String::new(),
                owner: String::new(),
            },
        ],
        ovs: Some(OvsConfig {
            raw_config_script: "ovs-vsctl set Open_vSwitch . other_config:hw-offload=true\n".into(),
        }),
        containerd_config: Some(ContainerdConfig {
            registry_endpoint: "https://registry.lab:5000".into(),
        }),
    }
}

/// What the simulator's `.control` says of the files: `PATH:BYTES:SHA256-16`,
/// PATH with bytes outside `[A-Za-z0-9/._-]` as `%XX`.
fn expected_files(os: &DpuOsConfig) -> String {
    os.config_files
        .iter()
        .map(|f| {
            let path: String = f
                .path
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-') {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let digest = hex::encode(sha2::Sha256::digest(f.raw.as_bytes()));
            format!("{path}:{}:{}", f.raw.len(), &digest[..16])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `.control` fields of the simulated DPU `rshim`.
fn control_fields(w: &World, rshim: &str) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(w.dev_root.join(".control")).expect(".control is readable");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{rshim} ")))
        .unwrap_or_else(|| panic!("no {rshim} in .control:\n{text}"));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flavor_with_every_dpu_os_section_reaches_the_simulated_dpu() {
    require_fuse!();
    let mut w = World::start(WorldOpts {
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        ..Default::default()
    })
    .await
    .expect("world starts");
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0"), ("dpu-b", "rshim1")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 1 << 20, "4.9.0").await.unwrap();
    let os = dpu_os();
    w.admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::Flavor {
                    metadata: meta("f-os"),
                    spec: Some(v1::FlavorSpec {
                        bf_cfg: [
                            ("HOSTNAME".to_string(), "dpu".to_string()),
                            ("ubuntu_PASSWORD".to_string(), "$1$x$secret".to_string()),
                        ]
                        .into(),
                        dpu_os: Some(os.clone()),
                        ..Default::default()
                    }),
                }
                .into(),
            ),
        })
        .await
        .unwrap();
    w.add_deployment(
        "d1",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f-os".into(),
            max_unavailable: 2,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    for dpu in ["dpu-a", "dpu-b"] {
        wait_phase(&mut w.admin, dpu, DpuPhase::Rebooting, T)
            .await
            .unwrap();
    }
    let admin = w.admin.clone();
    wait_for("n1 waiting for a reboot", T, || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
                .await
                .ok()?
                .into_inner();
            s.waiting_for_reboot.then_some(())
        }
    })
    .await
    .unwrap();
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    for dpu in ["dpu-a", "dpu-b"] {
        wait_phase(&mut w.admin, dpu, DpuPhase::Ready, T).await.unwrap();
    }

    // The simulated DPUs decoded every section and each file's bytes.
    for rshim in ["rshim0", "rshim1"] {
        let f = control_fields(&w, rshim);
        assert_eq!(f["installs"], "1", "{rshim}: {f:?}");
        assert_eq!(
            f["dpu_os"], "grub=2,sysctl=2,files=2,ovs,containerd,first_boot",
            "{rshim}: {f:?}"
        );
        assert_eq!(f["dpu_os_files"], expected_files(&os), "{rshim}");
    }
    // The rshim log the agent reads names the sections and the files.
    let misc = std::fs::read_to_string(w.dev_root.join("rshim0/misc")).unwrap();
    let log = std::fs::read_to_string(w.log_path("agent-n1")).unwrap_or_default();
    let seen = format!("{misc}\n{log}");
    assert!(
        seen.contains("bfb_modify_os: grub=2 sysctl=2 files=2 ovs containerd first_boot"),
        "no bfb_modify_os line in the rshim log or the agent's log:\n{misc}"
    );
    // The secret bf.cfg value and the file contents never reach the agent's log.
    assert!(
        !log.contains("$1$x$secret"),
        "the password leaked into the agent log"
    );
    assert!(
        !log.contains("$(reboot)"),
        "a config file's content leaked into the agent log"
    );
    w.shutdown().await.unwrap();
}
