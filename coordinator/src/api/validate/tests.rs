use hostplane_proto::v1::{
    Bfb, BfbSpec, Bridge, Deployment, DeploymentSpec, Device, DeviceSpec, Dpu, Flavor, FlavorSpec,
    HostNetwork, Node, NodeSpec, ObjectMeta, Resource,
};

use super::*;

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn good_node() -> Node {
    Node {
        metadata: meta("n1"),
        spec: Some(NodeSpec { reboot_method: 1 }),
        status: None,
    }
}

fn good_device() -> Device {
    Device {
        metadata: meta("d1"),
        spec: Some(DeviceSpec {
            node: "n1".into(),
            serial: "MT2233X0001".into(),
            pci_address: "0000:04:00.0".into(),
            rshim: "rshim0".into(),
            bmc_address: "10.0.0.9".into(),
        }),
        status: None,
    }
}

fn good_bfb() -> Bfb {
    Bfb {
        metadata: meta("doca-2.9"),
        spec: Some(BfbSpec {
            url: "https://images.example/bf.bfb".into(),
            sha256: "a".repeat(64),
            version: "2.9.0".into(),
            size_bytes: 0,
        }),
    }
}

fn good_flavor() -> Flavor {
    Flavor {
        metadata: meta("f1"),
        spec: Some(FlavorSpec {
            bf_cfg: [("UPDATE_DPU_OS".to_string(), "yes".to_string())].into(),
            nic_firmware: [("NUM_OF_VFS".to_string(), "8".to_string())].into(),
            nvconfig: vec![],
            dpu_os: None,
            host_network: Some(HostNetwork {
                num_vfs: 8,
                mtu: 9000,
                bridges: vec![Bridge {
                    name: "br-dpu".into(),
                    ports: vec!["eth0".into()],
                    mtu: 1500,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
    }
}

fn good_deployment() -> Deployment {
    Deployment {
        metadata: meta("dep1"),
        spec: Some(DeploymentSpec {
            device_selector: [("pool".to_string(), "a".to_string())].into(),
            bfb: "doca-2.9".into(),
            flavor: "f1".into(),
            power_policy: String::new(),
            max_unavailable: 2,
            node_effect: 1,
        }),
        status: None,
    }
}

fn check(r: Resource) -> std::result::Result<(), String> {
    resource("", &r).map_err(|e| e.to_string())
}

fn expect_err(label: &str, r: Resource, want: &str) {
    match check(r) {
        Ok(()) => panic!("{label}: accepted, wanted an error containing {want:?}"),
        Err(e) => assert!(e.contains(want), "{label}: {e:?} does not contain {want:?}"),
    }
}

#[test]
fn good_objects_pass() {
    for r in [
        Resource::from(good_node()),
        good_device().into(),
        good_bfb().into(),
        good_flavor().into(),
        good_deployment().into(),
    ] {
        check(r.clone()).unwrap_or_else(|e| panic!("{r:?}: {e}"));
    }
}

#[test]
fn names_must_be_dns_labels() {
    let cases: &[(&str, bool)] = &[
        ("n1", true),
        ("a", true),
        ("rack-1.node-2", true),
        (&"a".repeat(63), true),
        (&"a".repeat(64), false),
        ("", false),
        ("Foo_1", false),
        ("-a", false),
        ("a-", false),
        (".a", false),
        ("a b", false),
        ("ä", false),
    ];
    for (n, ok) in cases {
        assert_eq!(name("x.metadata.name", n).is_ok(), *ok, "{n:?}");
    }
    let e = name("node.metadata.name", "Foo_1").unwrap_err().to_string();
    assert!(
        e.starts_with("node.metadata.name \"Foo_1\": must be a DNS label"),
        "{e}"
    );
    assert_eq!(
        name("node.metadata.name", "").unwrap_err().to_string(),
        "node.metadata.name: required"
    );
}

#[test]
fn bad_fields_are_named() {
    type Case = (&'static str, Box<dyn Fn() -> Resource>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "no kind",
            Box::new(|| Resource { kind: None }),
            "resource: required",
        ),
        (
            "dpu",
            Box::new(|| {
                Dpu {
                    metadata: meta("x"),
                    ..Default::default()
                }
                .into()
            }),
            "resource.dpu: dpus are generated",
        ),
        (
            "no metadata",
            Box::new(|| {
                Node {
                    metadata: None,
                    ..good_node()
                }
                .into()
            }),
            "node.metadata: required",
        ),
        (
            "bad label key",
            Box::new(|| {
                let mut n = good_node();
                n.metadata
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("a b".into(), "x".into());
                n.into()
            }),
            "node.metadata.labels key \"a b\"",
        ),
        (
            "reboot method",
            Box::new(|| {
                Node {
                    spec: Some(NodeSpec { reboot_method: 7 }),
                    ..good_node()
                }
                .into()
            }),
            "node.spec.reboot_method: unknown value 7",
        ),
        (
            "device node",
            Box::new(|| {
                let mut d = good_device();
                d.spec.as_mut().unwrap().node.clear();
                d.into()
            }),
            "device.spec.node: required",
        ),
        (
            "device no spec",
            Box::new(|| {
                Device {
                    spec: None,
                    ..good_device()
                }
                .into()
            }),
            "device.spec.node: required",
        ),
        (
            "serial",
            Box::new(|| {
                let mut d = good_device();
                d.spec.as_mut().unwrap().serial.clear();
                d.into()
            }),
            "device.spec.serial: required",
        ),
        (
            "rshim",
            Box::new(|| {
                let mut d = good_device();
                d.spec.as_mut().unwrap().rshim = "tty0".into();
                d.into()
            }),
            "device.spec.rshim \"tty0\": must be rshim<N>",
        ),
        (
            "pci",
            Box::new(|| {
                let mut d = good_device();
                d.spec.as_mut().unwrap().pci_address = "04:00.0".into();
                d.into()
            }),
            "device.spec.pci_address \"04:00.0\": must be a PCI address",
        ),
        (
            "url scheme",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().url = "ftp://x/y.bfb".into();
                b.into()
            }),
            "bfb.spec.url: scheme must be http, https or file",
        ),
        (
            "url missing",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().url.clear();
                b.into()
            }),
            "bfb.spec.url: required",
        ),
        (
            "url no host",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().url = "http:///x".into();
                b.into()
            }),
            "bfb.spec.url: \"http:///x\" has no host",
        ),
        (
            "relative file url",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().url = "file://x.bfb".into();
                b.into()
            }),
            "bfb.spec.url: \"file://x.bfb\": a file URL needs an absolute path",
        ),
        (
            "sha upper",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().sha256 = "A".repeat(64);
                b.into()
            }),
            "bfb.spec.sha256: must be 64 lower-case hex characters",
        ),
        (
            "sha short",
            Box::new(|| {
                let mut b = good_bfb();
                b.spec.as_mut().unwrap().sha256 = "ab".into();
                b.into()
            }),
            "bfb.spec.sha256: must be 64",
        ),
        (
            "bf_cfg key",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec.as_mut().unwrap().bf_cfg.insert("1X".into(), "y".into());
                f.into()
            }),
            "flavor.spec.bf_cfg: key \"1X\" is not a shell identifier",
        ),
        (
            "bf_cfg newline",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec
                    .as_mut()
                    .unwrap()
                    .bf_cfg
                    .insert("X".into(), "a\nreboot".into());
                f.into()
            }),
            "flavor.spec.bf_cfg[\"X\"]: value must be one line",
        ),
        (
            "fw value",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec
                    .as_mut()
                    .unwrap()
                    .nic_firmware
                    .insert("X".into(), String::new());
                f.into()
            }),
            "flavor.spec.nic_firmware[\"X\"]: value required",
        ),
        (
            "mtu",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec.as_mut().unwrap().host_network.as_mut().unwrap().mtu = 20;
                f.into()
            }),
            "flavor.spec.host_network.mtu: 20 is out of range",
        ),
        (
            "vfs",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec.as_mut().unwrap().host_network.as_mut().unwrap().num_vfs = 1000;
                f.into()
            }),
            "flavor.spec.host_network.num_vfs: 1000 is more than 256",
        ),
        (
            "bridge name",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec.as_mut().unwrap().host_network.as_mut().unwrap().bridges[0].name =
                    "a-very-long-bridge-name".into();
                f.into()
            }),
            "flavor.spec.host_network.bridges[0].name \"a-very-long-bridge-name\"",
        ),
        (
            "bridge port",
            Box::new(|| {
                let mut f = good_flavor();
                f.spec.as_mut().unwrap().host_network.as_mut().unwrap().bridges[0]
                    .ports
                    .push("a/b".into());
                f.into()
            }),
            "flavor.spec.host_network.bridges[0].ports[1] \"a/b\"",
        ),
        (
            "bridge twice",
            Box::new(|| {
                let mut f = good_flavor();
                let hn = f.spec.as_mut().unwrap().host_network.as_mut().unwrap();
                hn.bridges.push(hn.bridges[0].clone());
                f.into()
            }),
            "flavor.spec.host_network.bridges[1].name: bridge \"br-dpu\" is listed twice",
        ),
        (
            "dep bfb",
            Box::new(|| {
                let mut d = good_deployment();
                d.spec.as_mut().unwrap().bfb.clear();
                d.into()
            }),
            "deployment.spec.bfb: required",
        ),
        (
            "dep flavor",
            Box::new(|| {
                let mut d = good_deployment();
                d.spec.as_mut().unwrap().flavor = "F".into();
                d.into()
            }),
            "deployment.spec.flavor \"F\": must be a DNS label",
        ),
        (
            "max_unavailable",
            Box::new(|| {
                let mut d = good_deployment();
                d.spec.as_mut().unwrap().max_unavailable = 10_001;
                d.into()
            }),
            "deployment.spec.max_unavailable: 10001 is more than 10000",
        ),
        (
            "node_effect",
            Box::new(|| {
                let mut d = good_deployment();
                d.spec.as_mut().unwrap().node_effect = 9;
                d.into()
            }),
            "deployment.spec.node_effect: unknown value 9",
        ),
        (
            "selector",
            Box::new(|| {
                let mut d = good_deployment();
                d.spec
                    .as_mut()
                    .unwrap()
                    .device_selector
                    .insert(String::new(), "x".into());
                d.into()
            }),
            "deployment.spec.device_selector key \"\"",
        ),
    ];
    for (label, make, want) in cases {
        expect_err(label, make(), want);
    }
}

#[test]
fn prefix_replaces_the_kind_noun() {
    let mut d = good_device();
    d.spec.as_mut().unwrap().serial.clear();
    let e = resource("devices[2]", &d.into()).unwrap_err().to_string();
    assert_eq!(e, "devices[2].spec.serial: required");
}

#[test]
fn kinds_and_helpers() {
    assert!(
        kind("kind", 0)
            .unwrap_err()
            .to_string()
            .starts_with("kind: required")
    );
    assert_eq!(kind("kind", 99).unwrap_err().to_string(), "kind: unknown kind 99");
    assert_eq!(kind("kind", 2).unwrap(), Kind::Device);
    for (s, ok) in [
        ("A", true),
        ("_x1", true),
        ("X_Y", true),
        ("1X", false),
        ("", false),
        ("a-b", false),
    ] {
        assert_eq!(is_shell_identifier(s), ok, "{s:?}");
    }
    for (s, ok) in [
        ("0000:04:00.0", true),
        ("0000:af:00.1", true),
        ("0000:04:00", false),
        ("000g:04:00.0", false),
    ] {
        assert_eq!(pci_address("f".into(), s).is_ok(), ok, "{s:?}");
    }
}
