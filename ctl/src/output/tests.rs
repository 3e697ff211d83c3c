//! Golden output per kind and format.
use hostplane_proto::v1::{
    Bfb, BfbSpec, Bridge, Deployment, DeploymentSpec, DeploymentStatus, Device, DeviceSpec, DeviceStatus,
    Dpu, DpuPhase, DpuSpec, DpuStatus, EventType, Flavor, FlavorSpec, HostNetwork, Kind, Node, NodeEffect,
    NodeSpec, NodeStatus, ObjectMeta, RebootMethod, Resource, WatchEvent,
};

use super::*;

const NOW: i64 = 1_700_000_000_000;

fn meta(name: &str, age_s: i64) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        resource_version: 7,
        labels: [("rack".to_string(), "r1".to_string())].into(),
        created_at_ms: NOW - age_s * 1000,
        ..Default::default()
    })
}

fn node() -> Resource {
    Node {
        metadata: meta("n1", 300),
        spec: Some(NodeSpec {
            reboot_method: RebootMethod::Agent as i32,
        }),
        status: Some(NodeStatus {
            reachable: true,
            maintenance_approved: true,
            waiting_for_reboot: false,
            ..Default::default()
        }),
    }
    .into()
}

fn device() -> Resource {
    Device {
        metadata: meta("dpu-a", 30),
        spec: Some(DeviceSpec {
            node: "n1".into(),
            serial: "MT2301".into(),
            pci_address: "0000:04:00.0".into(),
            rshim: "rshim0".into(),
            bmc_address: String::new(),
        }),
        status: Some(DeviceStatus {
            present: true,
            conditions: vec![],
        }),
    }
    .into()
}

fn bfb() -> Resource {
    Bfb {
        metadata: meta("bf-4.9", 3 * 86_400),
        spec: Some(BfbSpec {
            url: "http://repo/bf.bfb".into(),
            sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            version: "4.9.0".into(),
            size_bytes: 1536 * 1024 * 1024,
        }),
    }
    .into()
}

fn flavor() -> Resource {
    Flavor {
        metadata: meta("f1", 7200),
        spec: Some(FlavorSpec {
            bf_cfg: [("ENABLE_SFC_HBN".to_string(), "yes".to_string())].into(),
            nic_firmware: Default::default(),
            nvconfig: vec![hostplane_proto::v1::NicFirmwareConfig {
                device: "*".into(),
                parameters: vec!["PF_BAR2_ENABLE=0".into()],
                host_power_cycle_required: false,
            }],
            dpu_os: Some(hostplane_proto::v1::DpuOsConfig {
                grub: Some(hostplane_proto::v1::GrubConfig {
                    kernel_parameters: vec!["iommu=pt".into()],
                }),
                config_files: vec![hostplane_proto::v1::ConfigFile {
                    path: "/etc/motd".into(),
                    raw: "hi\n".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            host_network: Some(HostNetwork {
                num_vfs: 8,
                mtu: 9000,
                bridges: vec![Bridge {
                    name: "br0".into(),
                    ports: vec!["pf0".into()],
                    mtu: 0,
                    addresses: vec![],
                }],
                ..Default::default()
            }),
        }),
    }
    .into()
}

fn deployment() -> Resource {
    Deployment {
        metadata: meta("d1", 60),
        spec: Some(DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bf-4.9".into(),
            flavor: "f1".into(),
            power_policy: String::new(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
        }),
        status: Some(DeploymentStatus {
            dpus: 4,
            ready: 3,
            updated: 2,
            failed: 1,
            conditions: vec![],
        }),
    }
    .into()
}

fn dpu() -> Resource {
    Dpu {
        metadata: meta("dpu-a", 90),
        spec: Some(DpuSpec {
            device: "dpu-a".into(),
            node: "n1".into(),
            deployment: "d1".into(),
            bfb: "bf-4.9".into(),
            flavor: "f1".into(),
        }),
        status: Some(DpuStatus {
            phase: DpuPhase::OsInstalling as i32,
            message: "pushing BFB to rshim0".into(),
            ..Default::default()
        }),
    }
    .into()
}

#[test]
fn table_per_kind() {
    let cases = [
        (
            node(),
            "NAME   REACHABLE   MAINTENANCE   WAITING-REBOOT   POWER-CYCLE   LAST-REBOOT   REBOOT-METHOD   AGE\n\
             n1     true        approved      false            -             -             agent           5m\n",
        ),
        (
            device(),
            "NAME    NODE   RSHIM    SERIAL   PCI            PRESENT   AGE\n\
             dpu-a   n1     rshim0   MT2301   0000:04:00.0   true      30s\n",
        ),
        (
            bfb(),
            "NAME     VERSION   SIZE     SHA256         AGE   URL\n\
             bf-4.9   4.9.0     1.5GiB   0123456789ab   3d    http://repo/bf.bfb\n",
        ),
        (
            flavor(),
            "NAME   VFS   MTU    BRIDGES   BF-CFG   NIC-FW   NVCONFIG   DPU-OS           AGE\n\
             f1     8     9000   br0       1        0        1          grub=1,files=1   2h\n",
        ),
        (
            deployment(),
            "NAME   BFB      FLAVOR   READY   UPDATED   FAILED   NODE-EFFECT   AGE   SELECTOR\n\
             d1     bf-4.9   f1       3/4     2         1        auto          60s   model=bf3\n",
        ),
        (
            dpu(),
            "NAME    NODE   DEVICE   DEPLOYMENT   PHASE          AGE   MESSAGE\n\
             dpu-a   n1     dpu-a    d1           OSInstalling   90s   pushing BFB to rshim0\n",
        ),
    ];
    for (r, want) in cases {
        assert_eq!(one(&r, Format::Table, NOW).unwrap(), want, "{:?}", r.kind());
        assert_eq!(header(r.kind()).len(), row(&r, NOW).len(), "{:?}", r.kind());
    }
}

#[test]
fn empty_status_and_spec_show_dashes() {
    let bare: Resource = Dpu {
        metadata: Some(ObjectMeta {
            name: "x".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into();
    assert_eq!(row(&bare, NOW), ["x", "-", "-", "-", "Unspecified", "-", "-"]);
    let bare: Resource = Node {
        metadata: Some(ObjectMeta {
            name: "n".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into();
    assert_eq!(
        row(&bare, NOW),
        ["n", "false", "-", "false", "-", "-", "external", "-"]
    );
    // A node waiting for a power cycle, last rebooted warm; then power-cycled.
    let mut waiting = Node {
        metadata: bare.metadata().cloned(),
        spec: None,
        status: Some(NodeStatus {
            waiting_for_reboot: true,
            power_cycle_required: true,
            last_reboot_kind: hostplane_proto::v1::RebootKind::Reboot as i32,
            ..Default::default()
        }),
    };
    assert_eq!(
        row(&waiting.clone().into(), NOW),
        ["n", "false", "-", "true", "required", "reboot", "external", "-"]
    );
    waiting.status = Some(NodeStatus {
        last_reboot_kind: hostplane_proto::v1::RebootKind::PowerCycle as i32,
        ..Default::default()
    });
    assert_eq!(
        row(&waiting.into(), NOW),
        ["n", "false", "-", "false", "-", "power-cycle", "external", "-"]
    );
    let bare: Resource = Deployment::default().into();
    assert_eq!(
        row(&bare, NOW),
        ["-", "-", "-", "0/0", "0", "0", "hold", "-", "<all>"]
    );
}

#[test]
fn json_and_yaml_per_kind_round_trip() {
    for r in [node(), device(), bfb(), flavor(), deployment(), dpu()] {
        let json = one(&r, Format::Json, NOW).unwrap();
        let back: Resource = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r, "{json}");
        let yaml = one(&r, Format::Yaml, NOW).unwrap();
        let back: Resource = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, r, "{yaml}");
        assert_eq!(
            one(&r, Format::Name, NOW).unwrap(),
            format!("{}/{}\n", r.kind().noun(), r.name())
        );
    }
}

#[test]
fn json_golden_uses_proto3_names() {
    let json = one(&dpu(), Format::Json, NOW).unwrap();
    let want = format!(
        r#"{{
  "dpu": {{
    "metadata": {{
      "name": "dpu-a",
      "resourceVersion": "7",
      "labels": {{
        "rack": "r1"
      }},
      "createdAtMs": "{}"
    }},
    "spec": {{
      "device": "dpu-a",
      "node": "n1",
      "deployment": "d1",
      "bfb": "bf-4.9",
      "flavor": "f1"
    }},
    "status": {{
      "phase": "DPU_PHASE_OS_INSTALLING",
      "message": "pushing BFB to rshim0"
    }}
  }}
}}
"#,
        NOW - 90_000
    );
    assert_eq!(json, want);
}

#[test]
fn yaml_golden() {
    let yaml = one(&node(), Format::Yaml, NOW).unwrap();
    let want = format!(
        "node:\n  metadata:\n    name: n1\n    resourceVersion: '7'\n    labels:\n      rack: r1\n    \
         createdAtMs: '{}'\n  spec:\n    rebootMethod: REBOOT_METHOD_AGENT\n  status:\n    reachable: true\n    \
         maintenanceApproved: true\n",
        NOW - 300_000
    );
    assert_eq!(yaml, want);
}

#[test]
fn lists_are_arrays_and_sequences() {
    let items = [node(), node()];
    let json: serde_json::Value = serde_json::from_str(&list(&items, Format::Json, NOW).unwrap()).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    let back: Vec<Resource> = serde_norway::from_str(&list(&items, Format::Yaml, NOW).unwrap()).unwrap();
    assert_eq!(back, items);
    assert_eq!(
        list(&[node(), bfb()], Format::Name, NOW).unwrap(),
        "node/n1\nbfb/bf-4.9\n"
    );
    assert_eq!(list(&[], Format::Json, NOW).unwrap(), "[]\n");
}

#[test]
fn mixed_kinds_print_one_table_each_in_dependency_order() {
    let text = list(&[bfb(), node()], Format::Table, NOW).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME   REACHABLE"), "{text}");
    assert!(lines[1].starts_with("n1 "), "{text}");
    assert_eq!(lines[2], "");
    assert!(lines[3].starts_with("NAME     VERSION"), "{text}");
}

#[test]
fn action_per_format() {
    assert_eq!(
        action(&node(), "created", Format::Table).unwrap(),
        "node/n1 created\n"
    );
    assert_eq!(action(&node(), "created", Format::Name).unwrap(), "node/n1\n");
    let back: Resource = serde_json::from_str(&action(&node(), "created", Format::Json).unwrap()).unwrap();
    assert_eq!(back, node());
}

#[test]
fn watch_events_per_format() {
    let ev = |t: EventType, r: Resource| WatchEvent {
        r#type: t as i32,
        resource_version: 9,
        resource: Some(r),
    };
    let mut t = event_table(Kind::Dpu);
    let first = event(&ev(EventType::Added, dpu()), Format::Table, &mut t, NOW).unwrap();
    assert_eq!(
        first,
        "EVENT   NAME    NODE   DEVICE   DEPLOYMENT   PHASE          AGE   MESSAGE\n\
         ADDED   dpu-a   n1     dpu-a    d1           OSInstalling   90s   pushing BFB to rshim0\n"
    );
    let next = event(&ev(EventType::Modified, dpu()), Format::Table, &mut t, NOW).unwrap();
    assert!(next.starts_with("MODIFIED   dpu-a   n1 "), "{next:?}");
    assert_eq!(next.lines().count(), 1, "header printed once");

    let line = event(&ev(EventType::Deleted, node()), Format::Json, &mut t, NOW).unwrap();
    assert_eq!(line.lines().count(), 1, "one JSON object per line");
    let back: WatchEvent = serde_json::from_str(&line).unwrap();
    assert_eq!(back.r#type(), EventType::Deleted);
    assert_eq!(back.resource.unwrap(), node());

    let doc = event(&ev(EventType::Added, node()), Format::Yaml, &mut t, NOW).unwrap();
    assert!(doc.starts_with("---\ntype: EVENT_TYPE_ADDED\n"), "{doc}");
    assert_eq!(
        event(&ev(EventType::Added, node()), Format::Name, &mut t, NOW).unwrap(),
        "node/n1\n"
    );
}
