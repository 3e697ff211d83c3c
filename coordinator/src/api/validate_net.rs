//! Validation of a Flavor's `host_network`: the same rules the agent applies
//! before it touches the host (agent/src/net/model.rs), checked when the
//! Flavor is written so that a bad network is refused with the field's path
//! (`flavor.spec.host_network.bridges[1].name: ...`) instead of NACKed later.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hostplane_proto::v1::{Bridge, HostNetwork, Route, SriovPf, VfConfig};

use super::{Result, ifname, invalid, pci_address};

pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;
pub const MAX_VFS: u32 = 256;
pub const MAX_VLAN: u32 = 4094;
pub const MAX_QOS: u32 = 7;
pub const LINK_STATES: [&str; 4] = ["", "auto", "enable", "disable"];

/// The whole host network of a Flavor; `p` is its path (`flavor.spec.host_network`).
pub fn host_network(p: &str, h: &HostNetwork) -> Result {
    if h.num_vfs > MAX_VFS {
        return Err(invalid(
            format!("{p}.num_vfs"),
            format!("{} is more than {MAX_VFS}", h.num_vfs),
        ));
    }
    mtu(format!("{p}.mtu"), h.mtu)?;
    let mut bridges = HashSet::new();
    // Port (as written) -> the bridge that lists it first.
    let mut ports: HashMap<&str, &str> = HashMap::new();
    for (i, b) in h.bridges.iter().enumerate() {
        bridge(&format!("{p}.bridges[{i}]"), b, &mut bridges, &mut ports)?;
    }
    let mut pfs = HashSet::new();
    for (i, s) in h.sriov.iter().enumerate() {
        let sp = format!("{p}.sriov[{i}]");
        sriov(&sp, s)?;
        if !pfs.insert(s.pf.as_str()) {
            return Err(invalid(
                format!("{sp}.pf"),
                format!("PF {:?} is listed twice", s.pf),
            ));
        }
    }
    for (i, r) in h.routes.iter().enumerate() {
        route(&format!("{p}.routes[{i}]"), r)?;
    }
    Ok(())
}

/// 0 (leave as is) or MIN_MTU..=MAX_MTU.
pub fn mtu(field: String, value: u32) -> Result {
    if value != 0 && !(MIN_MTU..=MAX_MTU).contains(&value) {
        return Err(invalid(
            field,
            format!("{value} is out of range: 0 (leave as is) or {MIN_MTU}..={MAX_MTU}"),
        ));
    }
    Ok(())
}

fn bridge<'a>(
    bp: &str,
    b: &'a Bridge,
    bridges: &mut HashSet<&'a str>,
    ports: &mut HashMap<&'a str, &'a str>,
) -> Result {
    ifname(format!("{bp}.name"), &b.name)?;
    if !bridges.insert(b.name.as_str()) {
        return Err(invalid(
            format!("{bp}.name"),
            format!("bridge {:?} is listed twice", b.name),
        ));
    }
    mtu(format!("{bp}.mtu"), b.mtu)?;
    for (j, port) in b.ports.iter().enumerate() {
        let f = format!("{bp}.ports[{j}]");
        port_ref(f.clone(), port)?;
        if *port == b.name {
            return Err(invalid(f, format!("bridge {:?} cannot be its own port", b.name)));
        }
        if let Some(owner) = ports.insert(port.as_str(), b.name.as_str()) {
            return Err(invalid(
                f,
                format!("port {port:?} is already a port of bridge {owner:?}"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (j, a) in b.addresses.iter().enumerate() {
        let f = format!("{bp}.addresses[{j}]");
        cidr(a).map_err(|why| invalid(format!("{f} {a:?}"), why))?;
        if !seen.insert(a.as_str()) {
            return Err(invalid(f, format!("address {a:?} is listed twice")));
        }
    }
    Ok(())
}

/// A bridge port: `<ifname>`, `pci:<bdf>` or `vf:<pf>:<index>` (pf: a name or `pci:<bdf>`).
pub fn port_ref(field: String, value: &str) -> Result {
    let syntax = "must be an interface name, pci:<bdf> (e.g. pci:0000:04:00.0) or vf:<pf>:<index> \
                  (e.g. vf:ens1f0np0:0)";
    if let Some(bdf) = value.strip_prefix("pci:") {
        return pci_address(field, bdf);
    }
    if let Some(rest) = value.strip_prefix("vf:") {
        let Some((pf, index)) = rest.rsplit_once(':') else {
            return Err(invalid(format!("{field} {value:?}"), syntax));
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || index.parse::<u32>().is_err() {
            return Err(invalid(
                format!("{field} {value:?}"),
                format!("VF index {index:?} is not a number; {syntax}"),
            ));
        }
        return pf_ref(field, pf);
    }
    if value.contains(':') {
        return Err(invalid(format!("{field} {value:?}"), syntax));
    }
    ifname(field, value)
}

/// A PF: a netdev name or `pci:<bdf>`.
fn pf_ref(field: String, value: &str) -> Result {
    match value.strip_prefix("pci:") {
        Some(bdf) => pci_address(field, bdf),
        None => ifname(field, value),
    }
}

fn sriov(sp: &str, s: &SriovPf) -> Result {
    if s.pf.is_empty() {
        return Err(invalid(
            format!("{sp}.pf"),
            "required (a PF netdev name or pci:<bdf>)",
        ));
    }
    pf_ref(format!("{sp}.pf"), &s.pf)?;
    if s.num_vfs > MAX_VFS {
        return Err(invalid(
            format!("{sp}.num_vfs"),
            format!("{} is more than {MAX_VFS}", s.num_vfs),
        ));
    }
    let mut seen = HashSet::new();
    for (j, vf) in s.vfs.iter().enumerate() {
        let vp = format!("{sp}.vfs[{j}]");
        vf_config(&vp, vf, s.num_vfs)?;
        if !seen.insert(vf.index) {
            return Err(invalid(
                format!("{vp}.index"),
                format!("VF {} is listed twice", vf.index),
            ));
        }
    }
    Ok(())
}

fn vf_config(vp: &str, vf: &VfConfig, num_vfs: u32) -> Result {
    if vf.index >= num_vfs {
        return Err(invalid(
            format!("{vp}.index"),
            format!(
                "VF {} does not exist: num_vfs is {num_vfs} (VFs are numbered from 0)",
                vf.index
            ),
        ));
    }
    if !vf.mac.is_empty() {
        mac(&vf.mac).map_err(|why| invalid(format!("{vp}.mac {:?}", vf.mac), why))?;
    }
    if vf.vlan > MAX_VLAN {
        return Err(invalid(
            format!("{vp}.vlan"),
            format!("{} is out of range: 0 (no VLAN) or 1..={MAX_VLAN}", vf.vlan),
        ));
    }
    if vf.qos > MAX_QOS {
        return Err(invalid(
            format!("{vp}.qos"),
            format!("{} is out of range: 0..={MAX_QOS}", vf.qos),
        ));
    }
    if vf.qos > 0 && vf.vlan == 0 {
        return Err(invalid(
            format!("{vp}.qos"),
            "a QoS priority needs a VLAN (vlan is 0)",
        ));
    }
    if !LINK_STATES.contains(&vf.link_state.as_str()) {
        return Err(invalid(
            format!("{vp}.link_state {:?}", vf.link_state),
            "must be auto, enable, disable or empty (leave as is)",
        ));
    }
    Ok(())
}

fn route(rp: &str, r: &Route) -> Result {
    let f = format!("{rp}.destination");
    let dest: IpAddr = match r.destination.as_str() {
        "" => return Err(invalid(f, "required (a CIDR, default or default6)")),
        "default" => "0.0.0.0".parse().expect("valid"),
        "default6" => "::".parse().expect("valid"),
        d => {
            let (ip, prefix) = cidr(d).map_err(|why| invalid(format!("{f} {d:?}"), why))?;
            if network_of(ip, prefix) != ip {
                return Err(invalid(
                    format!("{f} {d:?}"),
                    format!(
                        "has host bits set; did you mean {}/{prefix}?",
                        network_of(ip, prefix)
                    ),
                ));
            }
            ip
        }
    };
    if !r.gateway.is_empty() {
        let gw: IpAddr = r
            .gateway
            .parse()
            .map_err(|_| invalid(format!("{rp}.gateway {:?}", r.gateway), "is not an IP address"))?;
        if gw.is_ipv4() != dest.is_ipv4() {
            return Err(invalid(
                format!("{rp}.gateway {:?}", r.gateway),
                format!(
                    "is IPv{} but the destination {:?} is IPv{}",
                    ip_version(gw),
                    r.destination,
                    ip_version(dest)
                ),
            ));
        }
    }
    if !r.dev.is_empty() {
        ifname(format!("{rp}.dev"), &r.dev)?;
    }
    if r.gateway.is_empty() && r.dev.is_empty() {
        return Err(invalid(
            format!("{rp}.dev"),
            "a route needs a gateway or a dev (or both)",
        ));
    }
    Ok(())
}

fn ip_version(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

/// `address/prefix`, IPv4 (prefix ≤ 32) or IPv6 (prefix ≤ 128).
pub fn cidr(s: &str) -> std::result::Result<(IpAddr, u8), String> {
    let Some((ip, prefix)) = s.split_once('/') else {
        return Err("must be in CIDR notation, address/prefix (e.g. 10.0.0.1/24 or fd00::1/64)".into());
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix.parse() {
        Ok(p) if prefix.bytes().all(|b| b.is_ascii_digit()) && p <= max => p,
        _ => return Err(format!("prefix length {prefix:?} must be 0..={max}")),
    };
    Ok((ip, prefix))
}

/// `ip` with the bits after `prefix` cleared.
fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`, unicast (a VF cannot take a multicast address).
pub fn mac(s: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err("must be a MAC address like 02:00:00:00:00:01".into());
    }
    let first = u8::from_str_radix(parts[0], 16).map_err(|e| e.to_string())?;
    if first & 1 == 1 {
        return Err(
            "is a multicast address; a VF needs a unicast MAC (lowest bit of the first byte clear)".into(),
        );
    }
    if parts.iter().all(|p| *p == "00") {
        return Err("is all zeros; leave mac empty to keep the VF's address".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
                format!(
                    "{p}.bridges[1].addresses[0] \"10.0.300.1/24\": \"10.0.300.1\" is not an IPv4 or IPv6"
                ),
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
                format!(
                    "{p}.routes[3].destination \"fd01::1/48\": has host bits set; did you mean fd01::/48?"
                ),
            ),
            (
                Box::new(|h| h.routes[0].gateway = "gateway".into()),
                format!("{p}.routes[0].gateway \"gateway\": is not an IP address"),
            ),
            (
                Box::new(|h| h.routes[0].gateway = "fd00::fe".into()),
                format!(
                    "{p}.routes[0].gateway \"fd00::fe\": is IPv6 but the destination \"default\" is IPv4"
                ),
            ),
            (
                Box::new(|h| h.routes[1].gateway = "10.0.0.1".into()),
                format!(
                    "{p}.routes[1].gateway \"10.0.0.1\": is IPv4 but the destination \"default6\" is IPv6"
                ),
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
}
