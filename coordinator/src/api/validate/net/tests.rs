//! Table tests for the host network rules.
use super::*;

fn err_of(h: &HostNetwork) -> String {
    match host_network("flavor.spec.host_network", h) {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn bridge(name: &str, ports: &[&str], addrs: &[&str]) -> Bridge {
    Bridge {
        name: name.into(),
        ports: ports.iter().map(|p| p.to_string()).collect(),
        mtu: 0,
        addresses: addrs.iter().map(|a| a.to_string()).collect(),
    }
}

fn route(dest: &str, gw: &str, dev: &str) -> Route {
    Route {
        destination: dest.into(),
        gateway: gw.into(),
        dev: dev.into(),
        metric: 0,
    }
}

fn vf(index: u32) -> VfConfig {
    VfConfig {
        index,
        ..Default::default()
    }
}

fn full() -> HostNetwork {
    HostNetwork {
        num_vfs: 8,
        mtu: 9000,
        bridges: vec![
            bridge(
                "br-dpu",
                &[
                    "ens1f0np0",
                    "pci:0000:04:00.1",
                    "vf:ens1f0np0:0",
                    "vf:pci:0000:04:00.0:3",
                ],
                &["10.0.0.1/24", "fd00::1/64"],
            ),
            Bridge {
                mtu: 1500,
                ..bridge("br-2", &["veth9"], &[])
            },
        ],
        sriov: vec![SriovPf {
            pf: "pci:0000:05:00.0".into(),
            num_vfs: 4,
            vfs: vec![VfConfig {
                index: 3,
                mac: "02:00:00:00:00:01".into(),
                trust: Some(true),
                spoof_check: Some(false),
                vlan: 4094,
                qos: 7,
                link_state: "enable".into(),
            }],
        }],
        routes: vec![
            route("default", "10.0.0.254", ""),
            route("default6", "fd00::fe", "br-dpu"),
            route("10.9.0.0/16", "", "br-dpu"),
            route("fd01::/48", "fd00::fe", ""),
        ],
    }
}

#[test]
fn a_complete_network_passes() {
    assert_eq!(err_of(&full()), "");
    assert_eq!(err_of(&HostNetwork::default()), "");
}

#[test]
fn every_rule_names_its_field() {
    type Mutate = Box<dyn Fn(&mut HostNetwork)>;
    let p = "flavor.spec.host_network";
    let cases: Vec<(Mutate, String)> = vec![
        (
            Box::new(|h| h.mtu = 67),
            format!("{p}.mtu: 67 is out of range: 0 (leave as is) or 68..=65535"),
        ),
        (
            Box::new(|h| h.mtu = 65536),
            format!("{p}.mtu: 65536 is out of range"),
        ),
        (
            Box::new(|h| h.bridges[1].mtu = 20),
            format!("{p}.bridges[1].mtu: 20"),
        ),
        (
            Box::new(|h| h.bridges[1].name = "br-sixteen-chars".into()),
            format!("{p}.bridges[1].name \"br-sixteen-chars\": must be an interface name"),
        ),
        (
            Box::new(|h| h.bridges[1].name = "br 0".into()),
            format!("{p}.bridges[1].name \"br 0\""),
        ),
        (
            Box::new(|h| h.bridges[1].name = "br-dpu".into()),
            format!("{p}.bridges[1].name: bridge \"br-dpu\" is listed twice"),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("br-2".into())),
            format!("{p}.bridges[1].ports[1]: bridge \"br-2\" cannot be its own port"),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("ens1f0np0".into())),
            format!("{p}.bridges[1].ports[1]: port \"ens1f0np0\" is already a port of bridge \"br-dpu\""),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("pci:04:00.0".into())),
            format!("{p}.bridges[1].ports[1] \"04:00.0\": must be a PCI address"),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("vf:ens1f0np0:x".into())),
            format!("{p}.bridges[1].ports[1] \"vf:ens1f0np0:x\": VF index \"x\" is not a number"),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("vf:ens1f0np0".into())),
            format!("{p}.bridges[1].ports[1] \"vf:ens1f0np0\": must be an interface name, pci:<bdf>"),
        ),
        (
            Box::new(|h| h.bridges[1].ports.push("eth:0".into())),
            format!("{p}.bridges[1].ports[1] \"eth:0\""),
        ),
        (
            Box::new(|h| h.bridges[1].addresses.push("10.0.0.1".into())),
            format!("{p}.bridges[1].addresses[0] \"10.0.0.1\": must be in CIDR notation"),
        ),
        (
            Box::new(|h| h.bridges[1].addresses.push("10.0.0.1/33".into())),
            format!("{p}.bridges[1].addresses[0] \"10.0.0.1/33\": prefix length \"33\" must be 0..=32"),
        ),
        (
            Box::new(|h| h.bridges[1].addresses.push("fd00::1/129".into())),
            format!("{p}.bridges[1].addresses[0] \"fd00::1/129\": prefix length \"129\" must be 0..=128"),
        ),
        (
            Box::new(|h| h.bridges[1].addresses.push("10.0.300.1/24".into())),
            format!("{p}.bridges[1].addresses[0] \"10.0.300.1/24\": \"10.0.300.1\" is not an IPv4 or IPv6"),
        ),
        (
            Box::new(|h| h.bridges[0].addresses.push("10.0.0.1/24".into())),
            format!("{p}.bridges[0].addresses[2]: address \"10.0.0.1/24\" is listed twice"),
        ),
        (
            Box::new(|h| h.num_vfs = 257),
            format!("{p}.num_vfs: 257 is more than 256"),
        ),
        (
            Box::new(|h| h.sriov[0].pf.clear()),
            format!("{p}.sriov[0].pf: required"),
        ),
        (
            Box::new(|h| h.sriov[0].pf = "pci:zz".into()),
            format!("{p}.sriov[0].pf \"zz\": must be a PCI address"),
        ),
        (
            Box::new(|h| h.sriov[0].num_vfs = 300),
            format!("{p}.sriov[0].num_vfs: 300 is more than 256"),
        ),
        (
            Box::new(|h| h.sriov.push(h.sriov[0].clone())),
            format!("{p}.sriov[1].pf: PF \"pci:0000:05:00.0\" is listed twice"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].index = 4),
            format!("{p}.sriov[0].vfs[0].index: VF 4 does not exist: num_vfs is 4"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs.push(vf(3))),
            format!("{p}.sriov[0].vfs[1].index: VF 3 is listed twice"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].mac = "02:00:00:00:00".into()),
            format!("{p}.sriov[0].vfs[0].mac \"02:00:00:00:00\": must be a MAC address"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].mac = "02:00:00:00:00:0g".into()),
            format!("{p}.sriov[0].vfs[0].mac \"02:00:00:00:00:0g\": must be a MAC address"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].mac = "01:00:5e:00:00:01".into()),
            format!("{p}.sriov[0].vfs[0].mac \"01:00:5e:00:00:01\": is a multicast address"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].mac = "00:00:00:00:00:00".into()),
            format!("{p}.sriov[0].vfs[0].mac \"00:00:00:00:00:00\": is all zeros"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].vlan = 4095),
            format!("{p}.sriov[0].vfs[0].vlan: 4095 is out of range"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].qos = 8),
            format!("{p}.sriov[0].vfs[0].qos: 8 is out of range: 0..=7"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].vlan = 0),
            format!("{p}.sriov[0].vfs[0].qos: a QoS priority needs a VLAN"),
        ),
        (
            Box::new(|h| h.sriov[0].vfs[0].link_state = "up".into()),
            format!("{p}.sriov[0].vfs[0].link_state \"up\": must be auto, enable, disable or empty"),
        ),
        (
            Box::new(|h| h.routes[2].destination.clear()),
            format!("{p}.routes[2].destination: required"),
        ),
        (
            Box::new(|h| h.routes[2].destination = "10.9.0.0".into()),
            format!("{p}.routes[2].destination \"10.9.0.0\": must be in CIDR notation"),
        ),
        (
            Box::new(|h| h.routes[2].destination = "10.9.1.0/16".into()),
            format!(
                "{p}.routes[2].destination \"10.9.1.0/16\": has host bits set; did you mean 10.9.0.0/16?"
            ),
        ),
        (
            Box::new(|h| h.routes[3].destination = "fd01::1/48".into()),
            format!("{p}.routes[3].destination \"fd01::1/48\": has host bits set; did you mean fd01::/48?"),
        ),
        (
            Box::new(|h| h.routes[0].gateway = "gateway".into()),
            format!("{p}.routes[0].gateway \"gateway\": is not an IP address"),
        ),
        (
            Box::new(|h| h.routes[0].gateway = "fd00::fe".into()),
            format!("{p}.routes[0].gateway \"fd00::fe\": is IPv6 but the destination \"default\" is IPv4"),
        ),
        (
            Box::new(|h| h.routes[1].gateway = "10.0.0.1".into()),
            format!("{p}.routes[1].gateway \"10.0.0.1\": is IPv4 but the destination \"default6\" is IPv6"),
        ),
        (
            Box::new(|h| h.routes[2].dev = "a/b".into()),
            format!("{p}.routes[2].dev \"a/b\": must be an interface name"),
        ),
        (
            Box::new(|h| h.routes[2].dev.clear()),
            format!("{p}.routes[2].dev: a route needs a gateway or a dev"),
        ),
    ];
    for (mutate, want) in cases {
        let mut h = full();
        mutate(&mut h);
        let got = err_of(&h);
        assert!(
            got.starts_with(&want),
            "got {got:?}\nwant a message starting {want:?}"
        );
    }
}

#[test]
fn cidr_and_mac_parsers() {
    for (s, ok) in [
        ("10.0.0.1/24", true),
        ("0.0.0.0/0", true),
        ("fd00::1/64", true),
        ("::/0", true),
        ("10.0.0.1/+4", false),
        ("10.0.0.1/", false),
        ("/24", false),
        ("10.0.0.1/24/1", false),
    ] {
        assert_eq!(cidr(s).is_ok(), ok, "{s:?}");
    }
    assert_eq!(cidr("10.1.2.3/8").unwrap(), ("10.1.2.3".parse().unwrap(), 8));
    assert_eq!(
        network_of("10.1.2.3".parse().unwrap(), 8),
        "10.0.0.0".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        network_of("10.1.2.3".parse().unwrap(), 0),
        "0.0.0.0".parse::<IpAddr>().unwrap()
    );
    for (s, ok) in [
        ("02:00:00:00:00:01", true),
        ("AA:BB:CC:DD:EE:FE", true),
        ("aa-bb-cc-dd-ee-ff", false),
        ("ff:ff:ff:ff:ff:ff", false),
        ("", false),
    ] {
        assert_eq!(mac(s).is_ok(), ok, "{s:?}");
    }
}

#[test]
fn port_references() {
    for (s, ok) in [
        ("veth0", true),
        ("pci:0000:04:00.0", true),
        ("vf:ens1f0:15", true),
        ("vf:pci:0000:04:00.0:0", true),
        ("vf::1", false),
        ("vf:ens1f0:", false),
        ("vf:ens1f0:-1", false),
        ("pci:", false),
        ("", false),
    ] {
        assert_eq!(port_ref("f".into(), s).is_ok(), ok, "{s:?}");
    }
}
